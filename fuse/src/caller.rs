//! Who is calling: maps the thread id the kernel gives us to a process, its mount namespace
//! and its command name. The `/proc` implementation is used in production; tests inject their own.

use std::fs;
use std::io;
use std::path::PathBuf;

use rustix::process::{Pid, PidfdFlags, pidfd_open};

/// The process behind a filesystem request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Process id (the thread group id, not the calling thread's id).
    pub pid: u32,
    /// Inode of the calling thread's mount namespace (`/proc/<tid>/ns/mnt`).
    pub mnt_ns: u64,
    /// The process's command name (`/proc/<pid>/comm`), for audit only: it is chosen by the process.
    pub command: String,
}

/// Resolves the thread id of a request (`fuser::Request::pid()`) to a [`Caller`].
///
/// # Security
/// The answer decides who may open a task's files: an implementation must never guess.
/// Return an error when the thread cannot be identified; the open is then denied.
pub trait CallerResolver: Send + Sync {
    /// Identify thread `tid` (as seen in the mounting process's PID namespace).
    fn resolve(&self, tid: u32) -> io::Result<Caller>;
}

/// Reads `/proc`: the namespace link `/proc/<tid>/ns/mnt`, the process id (the tid itself for
/// a main thread, else `Tgid:` from `/proc/<tid>/status`), and `/proc/<pid>/comm`.
///
/// The namespace is the calling *thread's*: a thread may `unshare(CLONE_NEWNS)` on its own, and
/// the open happened in the thread's namespace. While the request is pending the thread is
/// blocked in the syscall, so its tid cannot be reused under us.
#[derive(Clone, Debug)]
pub struct ProcResolver {
    proc_root: PathBuf,
}

impl Default for ProcResolver {
    fn default() -> Self {
        Self { proc_root: PathBuf::from("/proc") }
    }
}

impl ProcResolver {
    /// Resolver reading the host's `/proc`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl CallerResolver for ProcResolver {
    fn resolve(&self, tid: u32) -> io::Result<Caller> {
        if tid == 0 {
            // Requests the kernel makes on its own behalf carry pid 0: nobody to check.
            return Err(io::Error::new(io::ErrorKind::NotFound, "request without a pid"));
        }
        let dir = self.proc_root.join(tid.to_string());
        // Namespace first: it is what access depends on.
        let link = fs::read_link(dir.join("ns/mnt"))?;
        let mnt_ns = parse_mnt_ns(&link.to_string_lossy())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad ns/mnt link"))?;
        // Most callers are single-threaded or the main thread: then pid == tid, and the costly
        // /proc/<tid>/status read (about 25 us, more than a FUSE round trip) is not needed.
        let pid = if is_thread_group_leader(tid)? {
            tid
        } else {
            let status = fs::read_to_string(dir.join("status"))?;
            parse_tgid(&status).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid in status"))?
        };
        // The process may be exiting; the command is only for the audit trail.
        let command = fs::read_to_string(self.proc_root.join(pid.to_string()).join("comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        Ok(Caller { pid, mnt_ns, command })
    }
}

/// Whether `tid` is a process's main thread: `pidfd_open` without `PIDFD_THREAD` accepts only
/// thread-group leaders (other threads: `EINVAL` before Linux 6.9, `ENOENT` since; a tid that
/// does not exist: `ESRCH`). One syscall instead of reading `status`.
fn is_thread_group_leader(tid: u32) -> io::Result<bool> {
    let pid = i32::try_from(tid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad tid"))?;
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(_fd) => Ok(true),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The `Tgid:` value of a `/proc/<tid>/status` file.
fn parse_tgid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

/// The inode number in a namespace link such as `mnt:[4026531840]`.
pub fn parse_mnt_ns(link: &str) -> Option<u64> {
    link.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

/// The mount namespace inode of process `pid` (`/proc/<pid>/ns/mnt`): what the agent passes to
/// `TaskOwner::MountNamespace` once it knows a process of the task.
pub fn mount_namespace_of(pid: u32) -> io::Result<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/mnt"))?;
    parse_mnt_ns(&link.to_string_lossy()).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad ns/mnt link"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_link() {
        let status = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t4242\nNgid:\t0\nPid:\t4243\n";
        assert_eq!(parse_tgid(status), Some(4242));
        assert_eq!(parse_tgid("Name:\tx\n"), None);
        assert_eq!(parse_mnt_ns("mnt:[4026531840]"), Some(4026531840));
        assert_eq!(parse_mnt_ns("net:[4026531840]"), None);
        assert_eq!(parse_mnt_ns("mnt:[x]"), None);
    }

    #[test]
    fn resolves_own_process() {
        let me = std::process::id();
        let caller = ProcResolver::new().resolve(me).expect("resolve self");
        assert_eq!(caller.pid, me);
        assert_eq!(caller.mnt_ns, mount_namespace_of(me).expect("own ns"));
        assert!(!caller.command.is_empty());
        assert!(ProcResolver::new().resolve(0).is_err());
    }

    #[test]
    fn resolves_a_live_thread_to_its_process() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get() as u32).expect("send tid");
            let _ = done_rx.recv();
        });
        let tid = rx.recv().expect("tid");
        let caller = ProcResolver::new().resolve(tid).expect("resolve thread");
        done_tx.send(()).expect("release thread");
        h.join().expect("thread");
        assert_ne!(tid, std::process::id());
        assert_eq!(caller.pid, std::process::id());
        // The process's command, not the thread's name.
        let comm = fs::read_to_string(format!("/proc/{}/comm", caller.pid)).unwrap();
        assert_eq!(caller.command, comm.trim_end());
    }
}
