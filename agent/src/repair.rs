//! Repairs the view of a running task or container after the agent's FUSE mount died (a crash):
//! inside the task's own mount namespace, every mount of the dead filesystem is replaced, in
//! place, by a clone of the same path in the new mount.
//!
//! # How
//! A bind of the FUSE mount in another namespace (a task's `/run/secrets`, a container's bind of
//! its service directory) keeps the dead superblock for good, and nothing done in the host's
//! namespace reaches it (runc copies the top mount). So [`repair`], on a thread of its own:
//! 1. leaves the process's shared filesystem context (`unshare(CLONE_FS)`: `setns` of a mount
//!    namespace needs it, and changes only this thread's view);
//! 2. enters the target namespace (`setns`) and reads its mount table there; a mount is
//!    replaced only if it is of the dead filesystem ([`Device`], `fsname=hush`), names a path the
//!    owner may be given (`View::allowed`), is what its mount point resolves to (not hidden
//!    under another mount), and is dead (`statx` with `AT_STATX_FORCE_SYNC` fails with
//!    `ENOTCONN`: a live mount is never touched);
//! 3. goes back to the agent's namespace and clones each path in the new mount
//!    (`open_tree(OPEN_TREE_CLONE)`: a detached bind, which carries the new mount's options
//!    `ro,nosuid,nodev,noexec`);
//! 4. enters the target namespace again and, for each mount, tries to put the clone beneath the
//!    dead mount (`move_mount(MOVE_MOUNT_BENEATH)`, Linux 6.5) and detach the dead one
//!    (`umount2(MNT_DETACH)`), so the path never shows an empty directory. The kernel refuses it
//!    in many places (beneath a mount that sits on the namespace's root mount, as a container's
//!    `/run/secrets` does; where propagation would put a copy on top): every repair in this
//!    project's tests was refused (`Repaired::beneath` stayed 0). Then the dead mount is detached
//!    first and the clone moved into place right after, a window of two system calls in which
//!    the path shows the directory below.
//!
//! The thread ends with the work: nothing else in the agent ever runs in a task's namespace.
//!
//! # What it cannot do
//! Files open at the crash stay broken (their open file is on the dead superblock). A mount the
//! task cannot reach by path (the copy of the mount root hidden under a task's tmpfs) cannot be
//! reached here either: it keeps the dead superblock alive until the task ends. Propagation of a
//! replaced mount is private (the default of Docker's and Podman's binds).
#![allow(unsafe_code)]

use rustix::fs::{AtFlags, CWD, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags, move_mount, open_tree, unmount};
use rustix::thread::LinkNameSpaceType;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The `fsname` of the agent's FUSE mounts (the source column of mountinfo).
const FS_NAME: &str = "hush";

/// A device number (`major:minor`) as mountinfo shows it: names one superblock for as long as
/// anything refers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (major, minor) = s.split_once(':').ok_or_else(|| format!("not a device number: {s:?}"))?;
        Ok(Device {
            major: major.parse().map_err(|_| format!("not a device number: {s:?}"))?,
            minor: minor.parse().map_err(|_| format!("not a device number: {s:?}"))?,
        })
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Device {
    /// The device of the file `fd` is on.
    pub fn of(fd: impl AsFd) -> rustix::io::Result<Device> {
        let stat = rustix::fs::fstat(fd)?;
        Ok(Device { major: rustix::fs::major(stat.st_dev), minor: rustix::fs::minor(stat.st_dev) })
    }
}

/// One line of a mountinfo table, the fields repair needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MountLine {
    id: u64,
    device: Device,
    /// The path inside the filesystem that is mounted (`/services/web/run/secrets`).
    root: String,
    /// Where, as the reading thread's root sees it.
    mount_point: PathBuf,
    hush: bool,
}

fn parse_mountinfo(text: &[u8]) -> Vec<MountLine> {
    let mut lines = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let (Some(id), Some(device), Some(root), Some(mount_point)) =
            (fields.first(), fields.get(2), fields.get(3), fields.get(4))
        else {
            continue;
        };
        let Some(dash) = fields.iter().position(|f| *f == b"-") else { continue };
        let fstype = fields.get(dash + 1).copied().unwrap_or_default();
        let source = fields.get(dash + 2).copied().unwrap_or_default();
        let (Some(id), Some(device)) = (
            std::str::from_utf8(id).ok().and_then(|s| s.parse().ok()),
            std::str::from_utf8(device).ok().and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        let hush = (fstype == b"fuse" || fstype.starts_with(b"fuse.")) && unescape(source) == FS_NAME.as_bytes();
        lines.push(MountLine {
            id,
            device,
            root: String::from_utf8_lossy(&unescape(root)).into_owned(),
            mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape(mount_point))),
            hush,
        });
    }
    lines
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash...).
pub(crate) fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(octal) = field.get(i + 1..i + 4)
            && let Some(byte) = std::str::from_utf8(octal).ok().and_then(|s| u8::from_str_radix(s, 8).ok())
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// The devices of dead hush mounts stacked at `mount_root` in the agent's namespace (before the
/// stale mount is cleaned away there). Live ones (an agent still serving) are left out.
pub fn dead_mounts_at(mount_root: &Path) -> Vec<Device> {
    // The mount point may be dead itself: resolve its parent only.
    let (Some(parent), Some(name)) = (mount_root.parent(), mount_root.file_name()) else { return Vec::new() };
    let Ok(parent) = std::fs::canonicalize(if parent.as_os_str().is_empty() { Path::new(".") } else { parent }) else {
        return Vec::new();
    };
    let path = parent.join(name);
    let Ok(table) = std::fs::read("/proc/thread-self/mountinfo") else { return Vec::new() };
    if !matches!(is_dead(CWD, &path), Ok(true)) {
        return Vec::new();
    }
    // The top one is dead; those below it were left by earlier crashes (each restart cleans the
    // top only once it is gone), so they count too.
    parse_mountinfo(&table).into_iter().filter(|m| m.hush && m.mount_point == path).map(|m| m.device).collect()
}

/// Whether the mount at `path` is a FUSE mount whose server is gone. Forces a round trip to the
/// server: cached attributes would answer for a dead mount too.
fn is_dead(dir: impl AsFd, path: &Path) -> rustix::io::Result<bool> {
    match rustix::fs::statx(
        dir,
        path,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_FORCE_SYNC,
        StatxFlags::TYPE | StatxFlags::INO,
    ) {
        Ok(_) => Ok(false),
        Err(Errno::NOTCONN | Errno::CONNABORTED) => Ok(true),
        Err(errno) => Err(errno),
    }
}

/// A mount namespace to repair, held open.
pub struct Namespace {
    fd: OwnedFd,
    /// `NS_GET_MNTNS_ID` (Linux >= 6.9), never reused while the system runs.
    pub id: Option<u64>,
    /// Its inode on nsfs (reused once it is freed; held, it is not).
    pub inode: u64,
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace(mnt:[{}], id {:?})", self.inode, self.id)
    }
}

/// `PIDFD_GET_MNT_NAMESPACE` = `_IO(0xFF, 3)` (Linux 6.11, `linux/pidfd.h`).
const PIDFD_GET_MNT_NAMESPACE: libc::c_ulong = 0xFF03;
/// `NS_GET_MNTNS_ID` = `_IOR(0xb7, 0x5, __u64)` (Linux 6.9, `linux/nsfs.h`).
const NS_GET_MNTNS_ID: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<u64>(0xb7, 0x5);

impl Namespace {
    /// The mount namespace of the process `pidfd` refers to (`pid` is its number, for kernels
    /// before 6.11, where `/proc/PID/ns/mnt` is opened and the pidfd then proves that the process
    /// was still the one behind that pid). Fails with `ESRCH` once the process has exited.
    pub fn of_process(pidfd: &OwnedFd, pid: i32) -> rustix::io::Result<Namespace> {
        // SAFETY: PIDFD_GET_MNT_NAMESPACE takes no argument and returns a new descriptor (or -1):
        // the descriptor is owned by nobody else, so OwnedFd may take it.
        let raw = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_MNT_NAMESPACE as _, 0) };
        let fd = if raw >= 0 {
            // SAFETY: see above: a fresh descriptor returned by the kernel.
            unsafe { OwnedFd::from_raw_fd(raw) }
        } else {
            match Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) {
                Errno::NOTTY | Errno::INVAL => {
                    let fd = rustix::fs::open(
                        format!("/proc/{pid}/ns/mnt"),
                        OFlags::RDONLY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    if exited(pidfd) {
                        return Err(Errno::SRCH);
                    }
                    fd
                }
                errno => return Err(errno),
            }
        };
        Self::from_fd(fd)
    }

    /// This thread's own mount namespace.
    pub fn current() -> rustix::io::Result<Namespace> {
        Self::from_fd(rustix::fs::open("/proc/thread-self/ns/mnt", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?)
    }

    fn from_fd(fd: OwnedFd) -> rustix::io::Result<Namespace> {
        let inode = rustix::fs::fstat(&fd)?.st_ino;
        // SAFETY: NS_GET_MNTNS_ID writes exactly one __u64, what `Getter<_, u64>` provides.
        let getter = unsafe { rustix::ioctl::Getter::<NS_GET_MNTNS_ID, u64>::new() };
        // SAFETY: `fd` is open for the call; the opcode and output type match (above).
        let id = unsafe { rustix::ioctl::ioctl(&fd, getter) }.ok();
        Ok(Namespace { fd, id, inode })
    }

    /// Whether `other` is this namespace: the same kernel id where there is one, else the same
    /// inode (only meaningful while both are held).
    pub fn same(&self, id: Option<u64>, inode: u64) -> bool {
        match (self.id, id) {
            (Some(a), Some(b)) => a == b,
            _ => self.inode == inode,
        }
    }

    /// The namespace descriptor (e.g. to hold as a task's owner).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether the process of `pidfd` has exited (the pidfd polls readable then).
pub fn exited(pidfd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0)
}

/// What to put where in one namespace.
#[derive(Clone, Debug)]
pub struct View {
    /// The new FUSE mount (in the agent's namespace).
    pub new_root: PathBuf,
    /// Devices of the dead mounts to replace (the new mount's own is never one).
    pub stale: Vec<Device>,
    /// Only mounts of paths under this one are replaced (`/<task id>/` for a `hush run` task,
    /// `/services/<name>/` for a container of that service): a task is never given another's
    /// directory, nor the mount root.
    pub allowed: String,
}

/// What [`repair`] did in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Mount points whose dead mount was replaced.
    pub replaced: Vec<PathBuf>,
    /// How many of them had the new mount put beneath the dead one (no window without a mount);
    /// the others were detached first.
    pub beneath: usize,
    /// Mounts of the dead filesystem left as they were, and why (hidden, live, not allowed, gone
    /// from the new mount).
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// Why a namespace could not be repaired.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("cannot {step}: {errno}")]
    Step { step: &'static str, errno: Errno },
    #[error("cannot replace the mount at {}: {step}: {errno}", mount_point.display())]
    Replace { mount_point: PathBuf, step: &'static str, errno: Errno },
    #[error("the repair thread failed")]
    Thread,
}

fn step(step: &'static str) -> impl FnOnce(Errno) -> RepairError {
    move |errno| RepairError::Step { step, errno }
}

/// Replaces the dead mounts in `ns` (see the module documentation). Blocks while a thread of its
/// own does the work: call it off the async runtime (`spawn_blocking`).
pub fn repair(ns: &Namespace, view: &View) -> Result<Repaired, RepairError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("hush-repair".into())
            .spawn_scoped(scope, || repair_on_this_thread(ns, view))
            .map_err(|_| RepairError::Thread)?
            .join()
            .map_err(|_| RepairError::Thread)?
    })
}

/// Leaves the process's shared root, cwd and umask (`unshare(CLONE_FS)`), as `setns` of a mount
/// namespace requires.
fn unshare_fs() -> rustix::io::Result<()> {
    // SAFETY: the hazard `unshare_unsafe` documents is CLONE_FILES (threads no longer sharing a
    // file descriptor table); CLONE_FS unshares only root, cwd and umask of this thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
}

fn enter(ns: BorrowedFd<'_>) -> rustix::io::Result<()> {
    rustix::thread::move_into_link_name_space(ns, Some(LinkNameSpaceType::Mount))
}

/// The mount id of what `fd` is on (`mnt_id:` of its fdinfo, read through the agent's `/proc`:
/// the target namespace's own `/proc` may not show this thread at all). Never asks the
/// filesystem, so it works on a dead mount.
fn mount_id_of(proc: &OwnedFd, fd: &OwnedFd) -> Option<u64> {
    let info = rustix::fs::openat(
        proc,
        format!("thread-self/fdinfo/{}", fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut text = String::new();
    std::fs::File::from(info).read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| l.strip_prefix("mnt_id:")).and_then(|v| v.trim().parse().ok())
}

/// Whether `mount_point` resolves to the mount `id` (it is not hidden under another).
fn reaches(proc: &OwnedFd, mount_point: &Path, id: u64) -> bool {
    rustix::fs::open(mount_point, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .ok()
        .and_then(|fd| mount_id_of(proc, &fd))
        == Some(id)
}

fn repair_on_this_thread(ns: &Namespace, view: &View) -> Result<Repaired, RepairError> {
    unshare_fs().map_err(step("leave the shared filesystem context"))?;
    let home = Namespace::current().map_err(step("open the agent's namespace"))?;
    let proc = rustix::fs::open("/proc", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(step("open /proc"))?;
    let new_root = rustix::fs::open(&view.new_root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(step("open the new mount"))?;
    let new_device = Device::of(&new_root).map_err(step("stat the new mount"))?;
    let mut done = Repaired::default();

    // 2. What is there, seen from inside.
    enter(ns.fd()).map_err(step("enter the namespace"))?;
    let table = {
        let fd = rustix::fs::openat(&proc, "thread-self/mountinfo", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(step("open the namespace's mountinfo"))?;
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .read_to_end(&mut bytes)
            .map_err(|_| RepairError::Step { step: "read the namespace's mountinfo", errno: Errno::IO })?;
        bytes
    };
    let mut wanted = Vec::new();
    for mount in parse_mountinfo(&table) {
        if !mount.hush || mount.device == new_device || !view.stale.contains(&mount.device) {
            continue;
        }
        let why = if !mount.root.starts_with(&view.allowed) {
            Some("not the task's own path")
        } else if !reaches(&proc, &mount.mount_point, mount.id) {
            Some("hidden under another mount")
        } else if !matches!(is_dead(CWD, &mount.mount_point), Ok(true)) {
            Some("not dead")
        } else {
            None
        };
        match why {
            Some(why) => done.skipped.push((mount.mount_point, why)),
            None => wanted.push(mount),
        }
    }
    if wanted.is_empty() {
        return Ok(done);
    }

    // 3. The replacements, cloned where they can be (the agent's namespace).
    enter(home.fd()).map_err(step("go back to the agent's namespace"))?;
    let mut clones = Vec::new();
    for mount in wanted {
        let relative = mount.root.trim_start_matches('/');
        match open_tree(&new_root, relative, OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC) {
            Ok(clone) => clones.push((mount, clone)),
            // Not served any more (the service lost that file meanwhile): nothing to show.
            Err(Errno::NOENT) => done.skipped.push((mount.mount_point, "gone from the new mount")),
            Err(errno) => {
                return Err(RepairError::Replace {
                    mount_point: mount.mount_point,
                    step: "clone the new mount",
                    errno,
                });
            }
        }
    }

    // 4. Swap them in.
    enter(ns.fd()).map_err(step("enter the namespace again"))?;
    for (mount, clone) in clones {
        let fail = |step, errno| RepairError::Replace { mount_point: mount.mount_point.clone(), step, errno };
        if !reaches(&proc, &mount.mount_point, mount.id) {
            done.skipped.push((mount.mount_point, "changed meanwhile"));
            continue;
        }
        let beneath = move_mount(
            &clone,
            "",
            CWD,
            &mount.mount_point,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_BENEATH,
        );
        match beneath {
            Ok(()) => {
                unmount(&mount.mount_point, UnmountFlags::DETACH).map_err(|e| fail("detach the dead mount", e))?
            }
            // Refused (an old kernel, or a mount that cannot have one beneath): detach, then mount.
            Err(_) => {
                unmount(&mount.mount_point, UnmountFlags::DETACH).map_err(|e| fail("detach the dead mount", e))?;
                move_mount(&clone, "", CWD, &mount.mount_point, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
                    .map_err(|e| fail("mount the new one", e))?;
            }
        }
        done.replaced.push(mount.mount_point);
    }
    Ok(done)
}

/// How many views were repaired since the agent started, for its status line and the audit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `hush run` tasks whose namespace was repaired.
    pub tasks: u64,
    /// Containers whose namespace was repaired.
    pub containers: u64,
    /// Tasks left by the crashed agent that were ended instead (process gone, another namespace,
    /// or not repairable).
    pub ended: u64,
}

static TASKS: AtomicU64 = AtomicU64::new(0);
static CONTAINERS: AtomicU64 = AtomicU64::new(0);
static ENDED: AtomicU64 = AtomicU64::new(0);

/// The counts so far.
pub fn counts() -> Counts {
    Counts {
        tasks: TASKS.load(Ordering::Relaxed),
        containers: CONTAINERS.load(Ordering::Relaxed),
        ended: ENDED.load(Ordering::Relaxed),
    }
}

/// What a repair was about, for [`count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    TaskRepaired,
    ContainerRepaired,
    TaskEnded,
}

pub fn count(outcome: Outcome) {
    let counter = match outcome {
        Outcome::TaskRepaired => &TASKS,
        Outcome::ContainerRepaired => &CONTAINERS,
        Outcome::TaskEnded => &ENDED,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let table = b"\
22 27 0:21 / /proc rw,relatime - proc proc rw
41 40 0:51 / /run/hush ro,nosuid,nodev,noexec,relatime - fuse hush ro,user_id=0
44 41 0:54 / /run/hush rw - tmpfs tmpfs rw
45 30 0:51 /t1/root/run/secrets /run/secrets ro,relatime master:3 - fuse hush ro
46 30 0:52 /x /mnt/a\\040b ro - fuse.sshfs hush ro
";
        let lines = parse_mountinfo(table);
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[1].device, Device { major: 0, minor: 51 });
        assert!(lines[1].hush && !lines[0].hush && !lines[2].hush);
        assert_eq!(lines[3].root, "/t1/root/run/secrets");
        assert_eq!(lines[3].mount_point, Path::new("/run/secrets"));
        assert_eq!(lines[4].mount_point, Path::new("/mnt/a b"));
        assert!(lines[4].hush, "any fuse type with our fsname");
    }

    #[test]
    fn devices_parse_and_print() {
        let device: Device = "0:53".parse().unwrap();
        assert_eq!(device, Device { major: 0, minor: 53 });
        assert_eq!(device.to_string(), "0:53");
        assert!("53".parse::<Device>().is_err());
        assert_eq!(serde_json::to_string(&device).unwrap(), "\"0:53\"");
    }

    #[test]
    fn own_namespace_is_itself() {
        let me = Namespace::current().unwrap();
        let again = Namespace::current().unwrap();
        assert!(me.same(again.id, again.inode));
        let pid = rustix::process::getpid();
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        let through_pidfd = Namespace::of_process(&pidfd, pid.as_raw_nonzero().get()).unwrap();
        assert!(through_pidfd.same(me.id, me.inode));
        assert!(!exited(&pidfd));
    }
}
