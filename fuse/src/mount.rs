//! Mounting and unmounting: [`mount`] returns a guard that unmounts on drop, and
//! [`clean_stale_mount`] removes a dead mount left behind by a crashed agent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::mount::{UnmountFlags, unmount};

use crate::adapter::{self, RunningSession};
use crate::fs::SecretFs;

/// The `fsname` of our mounts: the source column of `/proc/self/mountinfo`.
const FS_NAME: &str = "hush";

/// How long unmounting waits for the session threads to stop. They outlive the unmount while
/// another mount namespace still holds a copy of the mount (a task's container).
const JOIN_DEADLINE: Duration = Duration::from_secs(2);

/// Mount and unmount failures.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Mounting failed (not root, no `/dev/fuse`, path missing or a dead mount).
    #[error("cannot mount at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("cannot unmount {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The mount point could not be examined.
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Session tuning.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Threads serving kernel requests (fuser's `n_threads`). Default 2, chosen from the agent
    /// bench (`tests/benches/agent.rs`: open+read+close of 1 KiB inside a `hush run` task with
    /// 1, 4 and 16 readers, interleaved with tmpfs). Release builds, best of two runs: 2 threads
    /// were best or within noise of best in 5 of 6 rows (run 1: 41.9k/s vs 34.0k for 1 and 33.3k
    /// for 4 threads with 1 reader; 83.4k vs 75.5k and 65.0k with 4 readers; 91.5k vs 76.7k and
    /// 81.9k with 16), and the in-process bench agrees (1 thread 5.4x tmpfs, 2 threads 6.5x,
    /// 4 threads 7.3x for 1 reader). Debug builds on loaded cores favoured 4 with 16 readers;
    /// the release figures decide, as the agent ships as a release build.
    pub threads: usize,
}

impl Default for MountConfig {
    fn default() -> Self {
        Self { threads: 2 }
    }
}

/// A live mount. Dropping it unmounts (see [`MountGuard::unmount`]).
pub struct MountGuard {
    fs: Arc<SecretFs>,
    path: PathBuf,
    session: Option<RunningSession>,
    /// Taken over from a predecessor: fuser knows no mount to unmount, we do it.
    resumed: bool,
}

impl std::fmt::Debug for MountGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountGuard").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Mount `fs` at `path` (an existing directory) with the default [`MountConfig`].
///
/// Options: `ro,nosuid,nodev,noexec,default_permissions,allow_other,fsname=hush`. Needs root
/// (or `CAP_SYS_ADMIN`) and `/dev/fuse`. Call [`clean_stale_mount`] first at agent start.
pub fn mount(fs: Arc<SecretFs>, path: &Path) -> Result<MountGuard, MountError> {
    mount_with_config(fs, path, &MountConfig::default())
}

/// [`mount`] with explicit tuning.
pub fn mount_with_config(fs: Arc<SecretFs>, path: &Path, config: &MountConfig) -> Result<MountGuard, MountError> {
    let session = adapter::start(fs.clone(), path, config.threads)
        .map_err(|source| MountError::Mount { path: path.to_path_buf(), source })?;
    Ok(MountGuard { fs, path: path.to_path_buf(), session: Some(session), resumed: false })
}

/// Serve the connection of a mount at `path` that another process made and initialised (a
/// hand-over: `device` is its `/dev/fuse` descriptor, `version` what it negotiated). `fs`
/// must hold the predecessor's state ([`SecretFs::import`]). Call [`MountGuard::resend`] once
/// the predecessor is gone.
pub fn resume(
    fs: Arc<SecretFs>,
    path: &Path,
    device: std::os::fd::OwnedFd,
    version: (u32, u32),
    config: &MountConfig,
) -> Result<MountGuard, MountError> {
    let session = adapter::resume(fs.clone(), device, version, config.threads)
        .map_err(|source| MountError::Mount { path: path.to_path_buf(), source })?;
    Ok(MountGuard { fs, path: path.to_path_buf(), session: Some(session), resumed: true })
}

/// `FUSE_NOTIFY_RESEND` (Linux 6.9): the kernel queues again every request a server read but
/// did not answer. Header only: length 16, error = the notify code, unique 0.
const FUSE_NOTIFY_RESEND: i32 = 7;

impl MountGuard {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop answering requests, for a hand-over: returns once none is being handled; later
    /// requests wait, unanswered, for the successor (see [`MountGuard::resend`]).
    pub fn freeze(&self) {
        self.fs.set_invalidator(None);
        if let Some(session) = &self.session {
            session.freeze();
        }
    }

    /// Serve again after [`MountGuard::freeze`] (the hand-over did not happen). `fs` must not
    /// have changed meanwhile (its invalidator is put back).
    pub fn thaw(&self) {
        if let Some(session) = &self.session {
            self.fs.set_invalidator(Some(session.invalidator()));
            session.thaw();
        }
    }

    /// The connection's `/dev/fuse` descriptor (to hand over).
    pub fn device(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.session.as_ref().map(|s| s.device())
    }

    /// The protocol version negotiated at `FUSE_INIT` (to hand over).
    pub fn version(&self) -> (u32, u32) {
        self.session.as_ref().map_or((7, 0), |s| s.version())
    }

    /// Asks the kernel to send again the requests a predecessor read but never answered
    /// (`FUSE_NOTIFY_RESEND`); until then their callers wait. Call it once the predecessor
    /// has exited: a request it still reads after this would wait again.
    pub fn resend(&self) -> io::Result<()> {
        let Some(device) = self.device() else { return Ok(()) };
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&16u32.to_ne_bytes());
        header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
        let written = rustix::io::write(device, &header)?;
        if written != header.len() {
            return Err(io::Error::other("short write of FUSE_NOTIFY_RESEND"));
        }
        Ok(())
    }

    /// Leave the mount and its connection to a successor: nothing is unmounted, and the
    /// serving threads (frozen, see [`MountGuard::freeze`]) stay parked until the process exits.
    pub fn abandon(mut self) {
        self.fs.set_invalidator(None);
        // The session owns fuser's mount handle, whose drop unmounts: it must never drop.
        std::mem::forget(self.session.take());
    }

    /// Unmount now, reporting failure (dropping the guard does the same, logging failure).
    ///
    /// Unmounts normally, or lazily (`MNT_DETACH`) if the mount is busy, then waits up to two
    /// seconds for the serving threads to stop. They keep serving while another mount
    /// namespace still holds a copy of the mount; they stop when the last copy goes.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), MountError> {
        let Some(mut session) = self.session.take() else {
            return Ok(());
        };
        // Invalidations after this point would go to a dead channel.
        self.fs.set_invalidator(None);
        let unmounted = if self.resumed {
            unmount(&self.path, UnmountFlags::empty()).map_err(io::Error::from)
        } else {
            session.unmount()
        };
        if let Err(e) = unmounted {
            tracing::debug!(path = %self.path.display(), error = %e, "unmount failed, detaching");
            unmount(&self.path, UnmountFlags::DETACH)
                .map_err(|e| MountError::Unmount { path: self.path.clone(), source: e.into() })?;
        }
        let deadline = Instant::now() + JOIN_DEADLINE;
        while !session.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        match session.join_if_finished() {
            Some(Err(e)) => tracing::warn!(error = %e, "fuse session ended with an error"),
            Some(Ok(())) => {}
            None => tracing::info!(
                path = %self.path.display(),
                "fuse session still referenced by another mount namespace; left running"
            ),
        }
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}

/// Remove dead or leftover hush mounts at `path` so that [`mount`] can succeed there.
///
/// A crashed agent leaves its FUSE mount behind: `stat` then fails with `ENOTCONN`. Such a
/// mount (any FUSE mount that is disconnected), and any live mount with `fsname=hush` at
/// exactly `path`, is detached (`umount2(MNT_DETACH)`). Returns whether anything was removed.
///
/// # Security
/// Only call this on the agent's own mount root: a live hush mount there is assumed to belong
/// to a previous agent.
pub fn clean_stale_mount(path: &Path) -> Result<bool, MountError> {
    let inspect = |source: io::Error| MountError::Inspect { path: path.to_path_buf(), source };
    let abs = std::path::absolute(path).map_err(inspect)?;
    let mut cleaned = false;
    // Mounts can be stacked; each round removes the top one.
    for _ in 0..16 {
        let stale = match fs::metadata(&abs) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(cleaned),
            Err(e) => return Err(inspect(e)),
            Ok(_) => {
                let canonical = fs::canonicalize(&abs).map_err(inspect)?;
                let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(inspect)?;
                top_mount_is_hush(&mountinfo, &canonical)
            }
        };
        if !stale {
            return Ok(cleaned);
        }
        unmount(&abs, UnmountFlags::DETACH).map_err(|e| MountError::Unmount { path: abs.clone(), source: e.into() })?;
        tracing::info!(path = %abs.display(), "detached stale hush mount");
        cleaned = true;
    }
    Ok(cleaned)
}

/// Whether the last (topmost) mount at `path` in a mountinfo listing is a hush FUSE mount.
fn top_mount_is_hush(mountinfo: &str, path: &Path) -> bool {
    let path = path.to_string_lossy();
    let mut top = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let mut fields = line.split(' ');
        let Some(mount_point) = fields.nth(4) else {
            continue;
        };
        if unescape(mount_point) != path {
            continue;
        }
        let mut after_dash = fields.skip_while(|f| *f != "-").skip(1);
        let fstype = after_dash.next().unwrap_or("");
        let source = after_dash.next().unwrap_or("");
        top = Some((fstype == "fuse" || fstype.starts_with("fuse.")) && unescape(source) == FS_NAME);
    }
    top.unwrap_or(false)
}

/// Undo mountinfo's octal escapes (`\040` for a space, etc.).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
40 27 0:50 / /run/hush rw,nosuid - tmpfs tmpfs rw
41 40 0:51 / /run/hush ro,nosuid,nodev,noexec,relatime - fuse hush ro,user_id=0,group_id=0,default_permissions,allow_other
42 27 0:52 / /mnt/other\\040dir rw - fuse sshfs rw
43 27 0:53 / /mnt/hush\\040x ro shared:5 - fuse hush ro
";

    #[test]
    fn finds_hush_mounts_only() {
        assert!(top_mount_is_hush(MOUNTINFO, Path::new("/run/hush")));
        assert!(!top_mount_is_hush(MOUNTINFO, Path::new("/mnt/other dir")));
        assert!(top_mount_is_hush(MOUNTINFO, Path::new("/mnt/hush x")));
        assert!(!top_mount_is_hush(MOUNTINFO, Path::new("/proc")));
        assert!(!top_mount_is_hush(MOUNTINFO, Path::new("/nowhere")));
        // Only the topmost mount counts.
        let under = "41 40 0:51 / /a ro - fuse hush ro\n44 41 0:54 / /a rw - tmpfs tmpfs rw\n";
        assert!(!top_mount_is_hush(under, Path::new("/a")));
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/plain\\"), "/plain\\");
        assert_eq!(unescape("/x\\04"), "/x\\04");
    }
}
