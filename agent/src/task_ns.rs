//! The mount namespace of one task: `/run/secrets` and each config bound from the agent's FUSE mount, the
//! host's filesystem otherwise seen as it is, and never modified.
//!
//! `hush-agent run` calls [`unshare_mount_namespace`] while still single-threaded, then [`apply`] with the
//! task's [`MountPlan`], then spawns the command. Nothing mounted here propagates back to the host.
//!
//! # How a missing target is made without touching the host
//! A target that does not exist on the host (`/etc/site.conf`, or `/run/secrets` itself) is created in an
//! overlay of its nearest existing ancestor directory: lower = the host directory, upper = an in-memory tmpfs
//! (unless that ancestor is `/`: see the next section).
//! The steps, in this order, and why:
//! 1. Every bind source is first captured as a detached mount (`open_tree(OPEN_TREE_CLONE)`, the fd form of
//!    a bind mount), so later overlays (of `/run`, say, hiding the FUSE mount at `/run/hush`) cannot hide it.
//! 2. Scratch space for an overlay's upper and work directories must not be on the host's filesystem, and
//!    must not hide anything the task should see. A small tmpfs is mounted on the FUSE mount root itself
//!    (our namespace only; the task will not see that directory anyway and the sources are already
//!    captured), the overlay is mounted, and the scratch tmpfs is detached again at once (by fd: the mount
//!    root may be below the overlaid directory, its path then leads into the overlay): the overlay holds
//!    its own private reference to its upper layer, so it keeps working. A detached `fsmount` tmpfs would
//!    avoid the attach, but older kernels refuse overlay layers on detached mounts (not in our namespace).
//! 3. An overlay hides the mounts below its directory (an overlay layer is one filesystem). Those are cloned
//!    (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`) before the overlay is mounted and moved back on top of
//!    it afterwards, so `/run/user/..`, `/etc/resolv.conf` binds in a container etc. stay as they were. They
//!    stay slaves of the host's mounts; only a mount the host makes later *directly* below the overlaid
//!    directory is not seen by the task.
//! 4. Missing directories and the empty file are created through the overlay (`mkdirat`, and `openat` with
//!    `O_CREAT | O_EXCL`, which never follow a symlink), so the writes land in the tmpfs upper layer.
//!
//! # A target directly under `/` (`/nginx_conf`, a config's default target, or `/srv/x` with no `/srv`)
//! The root directory is not overlaid: an overlay of `/` would send every write of the task to the root
//! filesystem (`/var/log`, `/home`, ... when they are not separate mounts) into the in-memory upper layer,
//! where it is lost and limited to [`OVERLAY_SIZE`], breaking "the host's filesystem as it is, read-write".
//! Mounting anything on `/` would also not change the process's root: that takes `pivot_root` (or
//! `chroot`) anyway. Instead the task gets a new root directory built from binds, and `pivot_root`s into it:
//! 1. Each entry of the host's `/` is captured first: directories and files as recursive clones
//!    (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`, so `/proc`, `/sys`, `/dev/pts`, `/run` with the FUSE
//!    mount, overlays made earlier for other targets... come along with everything mounted below them),
//!    symlinks (`/bin -> usr/bin`) as their link text.
//! 2. A tmpfs (owner and mode of the host's `/`) is mounted on the scratch directory (the FUSE mount root),
//!    each entry is recreated in it (a mount point with its clone moved onto it, or the same symlink), then
//!    `pivot_root(".", ".")` makes it the root and the old root is detached (`umount2(MNT_DETACH)`): the
//!    old tree, scratch mounts and the original FUSE mount included, is gone from the namespace, with no
//!    `..` path back to it (a `chroot` would leave one). The working directory is re-entered by path.
//! 3. The missing target is created in the new root (a tmpfs), as in an overlay.
//!
//! Below the first level everything is the host's own directories, read-write, with their mounts. Only
//! the root directory itself is a snapshot: a name the task creates directly in `/` goes to memory, and
//! a name the host adds to `/` later is not seen by the task.
//!
//! Limits: writes by the task into an overlaid directory (or into `/` itself, once rebuilt) go to memory
//! (at most [`OVERLAY_SIZE`]) and are lost when the task ends.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use crate::repair::unescape;
use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, OFlags, StatxFlags, Uid};
use rustix::io::Errno;
use rustix::mount::{
    MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags, mount, mount_change, mount_remount,
    move_mount, open_tree, unmount,
};

/// Where the task's secrets directory appears.
pub const SECRETS_TARGET: &str = "/run/secrets";

/// Size limit of the in-memory upper layer of each overlay (tmpfs `size=`): it holds the created mount
/// points and whatever the task writes into an overlaid directory.
pub const OVERLAY_SIZE: &str = "16m";

/// What [`apply`] mounts for one task. Paths only: no secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// The task's secrets directory in the agent's FUSE mount (e.g. /run/hush/<task>/root/run/secrets);
    /// None when the task has no secrets under /run/secrets.
    pub secrets_dir: Option<PathBuf>,
    /// Individual files to bind at absolute targets: (source file in the FUSE mount, target path), e.g.
    /// (/run/hush/<task>/root/etc/nginx/nginx.conf, /etc/nginx/nginx.conf).
    pub files: Vec<(PathBuf, PathBuf)>,
    /// The agent's FUSE mount root (e.g. /run/hush): hidden inside the task after the binds.
    pub mount_root: PathBuf,
}

/// Why the task's namespace could not be set up. Each message names the path and the failing step.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// `unshare(CLONE_NEWNS)` or making `/` a slave failed.
    #[error("cannot {step}: {}", Text(*errno))]
    Unshare { step: &'static str, errno: Errno },
    /// [`apply`] was called outside the namespace [`unshare_mount_namespace`] made: it would change the
    /// host's mounts.
    #[error("refusing to mount outside the task's mount namespace (unshare_mount_namespace was not called)")]
    HostNamespace,
    /// A target is not an absolute path without `..`, or cannot be made (see `reason`).
    #[error("cannot bind {} at {}: {reason}", source_path.display(), target.display())]
    Target { source_path: PathBuf, target: PathBuf, reason: String },
    /// A step of binding a source at its target failed.
    #[error("cannot bind {} at {}: {step}: {}", source_path.display(), target.display(), Text(*errno))]
    Bind { source_path: PathBuf, target: PathBuf, step: &'static str, errno: Errno },
    /// Rebuilding `/` from binds (for a missing target directly under it) failed.
    #[error("cannot rebuild / to create {}: {step}: {}", target.display(), Text(*errno))]
    Root { target: PathBuf, step: &'static str, errno: Errno },
    /// Overlaying the nearest existing ancestor of a missing target failed.
    #[error("cannot overlay {} to create {}: {step}: {}", dir.display(), target.display(), Text(*errno))]
    Overlay { dir: PathBuf, target: PathBuf, step: &'static str, errno: Errno },
    /// Creating a missing directory or file in an overlay failed.
    #[error("cannot create {} for {}: {}", path.display(), target.display(), Text(*errno))]
    Create { path: PathBuf, target: PathBuf, errno: Errno },
    /// Mounting the empty tmpfs over the FUSE mount root failed.
    #[error("cannot hide {}: {}", path.display(), Text(*errno))]
    Hide { path: PathBuf, errno: Errno },
}

/// An errno as the C library words it, without Rust's "(os error N)" suffix; ENODEV from a mount of
/// overlayfs is worded for what it means there.
struct Text(Errno);

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::io::Error::from(self.0).to_string();
        let text = match text.rfind(" (os error ") {
            Some(at) => &text[..at],
            None => &text,
        };
        f.write_str(text)
    }
}

/// Moves the calling process into a new mount namespace whose mounts are all slaves of the host's: host
/// mounts still propagate in, nothing mounted here propagates out.
///
/// Call it while the process is single-threaded (before any runtime starts): a mount namespace belongs to
/// a thread, and the other threads would stay in the host's namespace.
pub fn unshare_mount_namespace() -> Result<(), NsError> {
    unshare(rustix::thread::UnshareFlags::NEWNS)
        .map_err(|errno| NsError::Unshare { step: "unshare the mount namespace", errno })?;
    mount_change("/", MountPropagationFlags::REC | MountPropagationFlags::DOWNSTREAM)
        .map_err(|errno| NsError::Unshare { step: "make / a recursive slave", errno })?;
    let namespace = current_namespace().map_err(|errno| NsError::Unshare { step: "stat the new namespace", errno })?;
    *TASK_NAMESPACE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(namespace);
    Ok(())
}

#[allow(unsafe_code)]
fn unshare(flags: rustix::thread::UnshareFlags) -> rustix::io::Result<()> {
    debug_assert!(!flags.contains(rustix::thread::UnshareFlags::FILES));
    // SAFETY: the hazard `unshare_unsafe` documents is CLONE_FILES (threads no longer sharing a file
    // descriptor table), never passed here. CLONE_NEWNS only implies CLONE_FS (cwd, root, umask) and
    // CLONE_NEWPID implies nothing: neither touches file descriptors.
    unsafe { rustix::thread::unshare_unsafe(flags) }
}

/// Makes the next child of the calling thread the init of a new PID namespace (this process stays
/// where it is). Its processes then see only each other: no other task to signal, trace or enter.
pub fn unshare_pid_namespace() -> Result<(), NsError> {
    unshare(rustix::thread::UnshareFlags::NEWPID)
        .map_err(|errno| NsError::Unshare { step: "unshare the PID namespace", errno })
}

/// Sets up the task's view in the current mount namespace: `secrets_dir` read-only at `/run/secrets`,
/// each file read-only at its target, missing targets made in in-memory overlays, and `mount_root`
/// hidden under an empty read-only tmpfs. See the module documentation for how.
///
/// Call it after [`unshare_mount_namespace`], on the thread that will spawn the task. On error the
/// namespace may be half set up: do not start the task in it.
pub fn apply(plan: &MountPlan) -> Result<(), NsError> {
    refuse_host_namespace()?;

    // 1. Capture every source before anything can hide it.
    let mut binds = Vec::new();
    if let Some(dir) = &plan.secrets_dir {
        binds.push(Bind::capture(dir, Path::new(SECRETS_TARGET))?);
    }
    for (source, target) in &plan.files {
        binds.push(Bind::capture(source, target)?);
    }

    // 2. Make every missing target, in overlays. All before the first bind, so no overlay hides a bind.
    let mut overlays = Overlays { devs: HashSet::new(), scratch: &plan.mount_root };
    for bind in &binds {
        bind.make_target(&mut overlays)?;
    }

    // 3. Bind, then make each bind read-only.
    for bind in &binds {
        bind.attach()?;
    }

    // 4. Hide the FUSE mount root: the binds above keep their own references.
    mount(
        "tmpfs",
        &plan.mount_root,
        "tmpfs",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"mode=0755,size=4k",
    )
    .map_err(|errno| NsError::Hide { path: plan.mount_root.clone(), errno })
}

/// The mount namespace [`unshare_mount_namespace`] made (device and inode of its `ns/mnt` file): the only
/// one [`apply`] will change.
static TASK_NAMESPACE: Mutex<Option<(u64, u64)>> = Mutex::new(None);

/// This thread's mount namespace, as the device and inode of its `ns/mnt` file.
fn current_namespace() -> rustix::io::Result<(u64, u64)> {
    let stat = rustix::fs::stat("/proc/thread-self/ns/mnt")?;
    Ok((stat.st_dev, stat.st_ino))
}

/// The guard against changing the host's mounts: this thread must be in the namespace that
/// [`unshare_mount_namespace`] made.
fn refuse_host_namespace() -> Result<(), NsError> {
    let made = *TASK_NAMESPACE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match (made, current_namespace()) {
        (Some(made), Ok(current)) if made == current => Ok(()),
        _ => Err(NsError::HostNamespace),
    }
}

/// One source captured as a detached mount, and where it goes.
struct Bind {
    source: PathBuf,
    target: PathBuf,
    tree: OwnedFd,
    is_dir: bool,
}

impl Bind {
    fn capture(source: &Path, target: &Path) -> Result<Self, NsError> {
        let refuse = |reason: &str| NsError::Target {
            source_path: source.to_path_buf(),
            target: target.to_path_buf(),
            reason: reason.to_owned(),
        };
        if !target.is_absolute() {
            return Err(refuse("the target is not an absolute path"));
        }
        if target.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
            return Err(refuse("the target contains . or .."));
        }
        let fail = |step, errno| NsError::Bind {
            source_path: source.to_path_buf(),
            target: target.to_path_buf(),
            step,
            errno,
        };
        let tree = open_tree(CWD, source, OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC)
            .map_err(|errno| fail("clone the source", errno))?;
        let stat = rustix::fs::fstat(&tree).map_err(|errno| fail("stat the source", errno))?;
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        Ok(Bind { source: source.to_path_buf(), target: target.to_path_buf(), tree, is_dir })
    }

    /// Creates the target (an empty directory or file) if the host lacks it, in an overlay of its nearest
    /// existing ancestor.
    fn make_target(&self, overlays: &mut Overlays<'_>) -> Result<(), NsError> {
        let refuse =
            |reason: String| NsError::Target { source_path: self.source.clone(), target: self.target.clone(), reason };
        // Walk up to the nearest path that exists (without following a final symlink).
        let mut missing: Vec<&OsStr> = Vec::new();
        let mut existing = self.target.as_path();
        loop {
            match rustix::fs::lstat(existing) {
                Ok(_) => break,
                Err(Errno::NOENT) => {
                    // `existing` is absolute and not `/` (which exists), so it has a name and a parent.
                    missing.push(existing.file_name().expect("a missing absolute path is not /"));
                    existing = existing.parent().expect("a missing absolute path is not /");
                }
                Err(errno) => {
                    return Err(refuse(format!("cannot stat {}: {}", existing.display(), Text(errno))));
                }
            }
        }
        if missing.is_empty() {
            // It exists; a dangling symlink or a type mismatch is reported by the bind itself.
            return Ok(());
        }
        let dir = std::fs::canonicalize(existing)
            .map_err(|e| refuse(format!("cannot resolve {}: {e}", existing.display())))?;
        let stat = rustix::fs::stat(&dir)
            .map_err(|errno| refuse(format!("cannot stat {}: {}", dir.display(), Text(errno))))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return Err(refuse(format!("{} is not a directory", existing.display())));
        }
        if !overlays.devs.contains(&stat.st_dev) {
            let dev = if dir == Path::new("/") {
                overlays.rebuild_root(&self.target)?
            } else {
                overlays.overlay(&dir, &self.target)?
            };
            overlays.devs.insert(dev);
        }

        // Create the missing names through the overlay, one directory fd at a time (no symlink followed).
        let create =
            |path: &Path, errno| NsError::Create { path: path.to_path_buf(), target: self.target.clone(), errno };
        let mut path = existing.to_path_buf();
        let mut parent = rustix::fs::open(&dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|errno| create(&path, errno))?;
        for (i, name) in missing.iter().rev().enumerate() {
            path.push(name);
            let last = i + 1 == missing.len();
            if last && !self.is_dir {
                rustix::fs::openat(
                    &parent,
                    *name,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o644),
                )
                .map_err(|errno| create(&path, errno))?;
                break;
            }
            rustix::fs::mkdirat(&parent, *name, Mode::from_raw_mode(0o755)).map_err(|errno| create(&path, errno))?;
            parent = rustix::fs::openat(
                &parent,
                *name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|errno| create(&path, errno))?;
        }
        Ok(())
    }

    /// Moves the captured source onto the target (following a symlink at the target, as mount(2) does),
    /// then makes it read-only, nosuid, nodev, noexec.
    fn attach(&self) -> Result<(), NsError> {
        let fail =
            |step, errno| NsError::Bind { source_path: self.source.clone(), target: self.target.clone(), step, errno };
        move_mount(
            &self.tree,
            "",
            CWD,
            &self.target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_SYMLINKS,
        )
        .map_err(|errno| fail("mount", errno))?;
        mount_remount(
            &self.target,
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        )
        .map_err(|errno| fail("remount read-only", errno))
    }
}

/// The overlays made so far (by the device of their root directory, the rebuilt `/` included) and where
/// scratch tmpfs go.
struct Overlays<'a> {
    devs: HashSet<u64>,
    scratch: &'a Path,
}

impl Overlays<'_> {
    /// Mounts an overlay (lower: `dir` as it is, upper: a fresh tmpfs) on `dir` and puts the mounts that were
    /// below `dir` back on top of it. Returns the overlay's device number.
    fn overlay(&self, dir: &Path, target: &Path) -> Result<u64, NsError> {
        let fail = |step, errno| NsError::Overlay { dir: dir.to_path_buf(), target: target.to_path_buf(), step, errno };
        let lower = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|errno| fail("open", errno))?;
        let lower_stat = rustix::fs::fstat(&lower).map_err(|errno| fail("stat", errno))?;

        // The mounts below `dir`, cloned before the overlay hides them.
        let submounts = submounts(&lower, dir).map_err(|errno| fail("read /proc/thread-self/mountinfo", errno))?;
        let mut clones = Vec::new();
        for mount_point in submounts {
            let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_RECURSIVE;
            match open_tree(CWD, &mount_point, flags) {
                Ok(tree) => clones.push((mount_point, tree)),
                // A mount point deleted on the host: nothing left to show.
                Err(Errno::NOENT) => {}
                Err(errno) => return Err(fail("clone a mount below it", errno)),
            }
        }

        // Scratch tmpfs, detached again right after the overlay mount (which keeps its own reference).
        let data = CString::new(format!("mode=0700,size={OVERLAY_SIZE}")).expect("no NUL in constant options");
        mount("tmpfs", self.scratch, "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, data.as_c_str())
            .map_err(|errno| fail("mount a tmpfs for its upper layer", errno))?;
        // Named by fd from here on: once the overlay is mounted, the scratch path may lead into it (when
        // the scratch directory is below `dir`) rather than to the tmpfs.
        let scratch = rustix::fs::open(self.scratch, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty());
        let mounted = match &scratch {
            Ok(scratch) => self.mount_overlay(dir, &lower, &lower_stat, scratch),
            Err(errno) => Err(("open the scratch tmpfs", *errno)),
        };
        let detached = match &scratch {
            Ok(scratch) => unmount(format!("/proc/self/fd/{}", scratch.as_raw_fd()), UnmountFlags::DETACH),
            Err(_) => unmount(self.scratch, UnmountFlags::DETACH),
        };
        mounted.map_err(|(step, errno)| fail(step, errno))?;
        detached.map_err(|errno| fail("detach the scratch tmpfs", errno))?;

        let overlay = rustix::fs::stat(dir).map_err(|errno| fail("stat the overlay", errno))?;
        for (mount_point, tree) in clones {
            move_mount(&tree, "", CWD, &mount_point, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
                .map_err(|errno| fail("put back a mount below it", errno))?;
        }
        Ok(overlay.st_dev)
    }

    /// Replaces `/` by a tmpfs holding the host root's entries as recursive binds (see the module
    /// documentation) and makes it the root of this namespace. Returns the new root's device number.
    fn rebuild_root(&self, target: &Path) -> Result<u64, NsError> {
        let fail = |step, errno| NsError::Root { target: target.to_path_buf(), step, errno };
        let cwd = std::env::current_dir().ok();
        let root = rustix::fs::stat("/").map_err(|errno| fail("stat /", errno))?;

        // 1. Capture every entry before mounting anything.
        let mut entries = Vec::new();
        let host_root = rustix::fs::open("/", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|errno| fail("open /", errno))?;
        let mut dir = rustix::fs::Dir::read_from(&host_root).map_err(|errno| fail("read /", errno))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|errno| fail("read /", errno))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
            if name == "." || name == ".." {
                continue;
            }
            match Entry::capture(&host_root, &name) {
                Ok(entry) => entries.push((name, entry)),
                // Removed on the host meanwhile: nothing to show.
                Err(Errno::NOENT) => {}
                Err(errno) => return Err(fail("capture an entry of /", errno)),
            }
        }

        // 2. The new root, filled in on the scratch directory.
        let data = CString::new(format!(
            "mode={:o},uid={},gid={},size={OVERLAY_SIZE}",
            root.st_mode & 0o7777,
            root.st_uid,
            root.st_gid
        ))
        .expect("no NUL in numbers");
        mount("tmpfs", self.scratch, "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, data.as_c_str())
            .map_err(|errno| fail("mount a tmpfs for the new root", errno))?;
        let new_root =
            rustix::fs::open(self.scratch, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|errno| fail("open the new root", errno))?;
        for (name, entry) in &entries {
            entry.place(&new_root, name).map_err(|(step, errno)| fail(step, errno))?;
        }

        // 3. Swap: the old root ends up stacked on the new one, then is detached with all its mounts.
        rustix::process::fchdir(&new_root).map_err(|errno| fail("enter the new root", errno))?;
        rustix::process::pivot_root(".", ".").map_err(|errno| fail("pivot_root", errno))?;
        unmount(".", UnmountFlags::DETACH).map_err(|errno| fail("detach the old root", errno))?;
        rustix::process::chdir("/").map_err(|errno| fail("enter the new root", errno))?;
        // Same directory by path; if it no longer resolves (it was in the detached tree), stay at `/`.
        if let Some(cwd) = cwd {
            let _ = rustix::process::chdir(&cwd);
        }
        Ok(rustix::fs::stat("/").map_err(|errno| fail("stat the new root", errno))?.st_dev)
    }

    /// With the scratch tmpfs mounted: makes upper (owner and mode of `dir`, since it becomes the overlay's
    /// root) and work, and mounts the overlay. Layers are named by `/proc/self/fd` links, so no path needs
    /// escaping for overlayfs's option syntax.
    fn mount_overlay(
        &self,
        dir: &Path,
        lower: &OwnedFd,
        lower_stat: &rustix::fs::Stat,
        scratch: &OwnedFd,
    ) -> Result<(), (&'static str, Errno)> {
        let layer = |name: &str| -> Result<OwnedFd, (&'static str, Errno)> {
            rustix::fs::mkdirat(scratch, name, Mode::from_raw_mode(0o700)).map_err(|errno| ("make a layer", errno))?;
            rustix::fs::openat(scratch, name, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|errno| ("open a layer", errno))
        };
        let upper = layer("upper")?;
        let work = layer("work")?;
        rustix::fs::chownat(
            scratch,
            "upper",
            Some(Uid::from_raw(lower_stat.st_uid)),
            Some(Gid::from_raw(lower_stat.st_gid)),
            AtFlags::empty(),
        )
        .map_err(|errno| ("set the upper layer's owner", errno))?;
        rustix::fs::chmodat(scratch, "upper", Mode::from_raw_mode(lower_stat.st_mode & 0o7777), AtFlags::empty())
            .map_err(|errno| ("set the upper layer's mode", errno))?;
        let data = CString::new(format!(
            "lowerdir=/proc/self/fd/{},upperdir=/proc/self/fd/{},workdir=/proc/self/fd/{}",
            lower.as_raw_fd(),
            upper.as_raw_fd(),
            work.as_raw_fd()
        ))
        .expect("no NUL in fd numbers");
        mount("overlay", dir, "overlay", MountFlags::empty(), data.as_c_str()).map_err(|errno| match errno {
            Errno::NODEV => ("mount overlayfs (not available in this kernel)", errno),
            _ => ("mount overlayfs", errno),
        })
    }
}

/// One entry of the host's `/`, as [`Overlays::rebuild_root`] carries it into the new root.
enum Entry {
    /// A symlink, recreated with the same text.
    Symlink(OsString),
    /// Anything else, cloned with everything mounted below it; `is_dir` tells what its mount point is.
    Tree { tree: OwnedFd, is_dir: bool },
}

impl Entry {
    fn capture(root: &OwnedFd, name: &OsStr) -> Result<Self, Errno> {
        let stat = rustix::fs::statat(root, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
            return Ok(Entry::Symlink(OsString::from_vec(
                rustix::fs::readlinkat(root, name, Vec::new())?.into_bytes(),
            )));
        }
        let flags = OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE
            | OpenTreeFlags::AT_SYMLINK_NOFOLLOW;
        let tree = open_tree(root, name, flags)?;
        // The type of what is mounted there (a mount point's own type matches it).
        let is_dir = FileType::from_raw_mode(rustix::fs::fstat(&tree)?.st_mode) == FileType::Directory;
        Ok(Entry::Tree { tree, is_dir })
    }

    /// Recreates the entry as `name` in the directory `dir` of the new root.
    fn place(&self, dir: &OwnedFd, name: &OsStr) -> Result<(), (&'static str, Errno)> {
        match self {
            Entry::Symlink(text) => {
                rustix::fs::symlinkat(text.as_os_str(), dir, name).map_err(|errno| ("recreate a symlink", errno))
            }
            Entry::Tree { tree, is_dir } => {
                if *is_dir {
                    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
                } else {
                    rustix::fs::openat(
                        dir,
                        name,
                        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                        Mode::from_raw_mode(0o644),
                    )
                    .map(drop)
                }
                .map_err(|errno| ("make a mount point", errno))?;
                move_mount(tree, "", dir, name, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
                    .map_err(|errno| ("bind an entry of /", errno))
            }
        }
    }
}

/// The mount points of the mounts directly below the mount that holds `dir` (fd `dir_fd`), under `dir`,
/// leaving out those under another of them (hidden, or carried along by a recursive clone).
fn submounts(dir_fd: &OwnedFd, dir: &Path) -> Result<Vec<PathBuf>, Errno> {
    // The mount holding `dir`; without STATX_MNT_ID (Linux < 5.8), every mount under `dir` is a candidate.
    let holder = rustix::fs::statx(dir_fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .ok()
        .filter(|s| StatxFlags::from_bits_retain(s.stx_mask).contains(StatxFlags::MNT_ID))
        .map(|s| s.stx_mnt_id);
    // Our own thread's namespace: /proc/self is the thread group leader's, which may differ in tests.
    let table =
        std::fs::read("/proc/thread-self/mountinfo").map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    let mut found: Vec<PathBuf> = Vec::new();
    for line in table.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let (Some(parent), Some(mount_point)) = (fields.get(1), fields.get(4)) else {
            continue;
        };
        if let Some(holder) = holder
            && std::str::from_utf8(parent).ok().and_then(|p| p.parse::<u64>().ok()) != Some(holder)
        {
            continue;
        }
        let mount_point = PathBuf::from(OsString::from_vec(unescape(mount_point)));
        if mount_point != dir && mount_point.starts_with(dir) && !found.contains(&mount_point) {
            found.push(mount_point);
        }
    }
    let outer: Vec<PathBuf> =
        found.iter().filter(|m| !found.iter().any(|other| other != *m && m.starts_with(other))).cloned().collect();
    Ok(outer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_mountinfo() {
        assert_eq!(unescape(br"/a\040b\134c"), br"/a b\c");
        assert_eq!(unescape(br"/plain\x"), br"/plain\x");
    }

    #[test]
    fn errno_text_has_no_suffix() {
        assert_eq!(Text(Errno::NOENT).to_string(), "No such file or directory");
    }
}
