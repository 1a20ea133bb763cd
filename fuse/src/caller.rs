//! Who is calling: maps the thread id the kernel gives us to a process, its mount namespace
//! and its command name. The `/proc` implementation is used in production; tests inject their own.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
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

/// Reads `/proc`, with a per-thread cache of what cannot change while a thread lives.
///
/// For each request: the calling thread's mount namespace, read fresh from `/proc/<tid>/ns/mnt`;
/// the process id and a handle on the process's command name, from a cache keyed by thread id;
/// the command name itself, read fresh through that handle.
///
/// # What is cached, and why that is safe
/// - **The thread's identity.** A thread id is reused only after its thread has exited and been
///   reaped. Each cache entry holds a pidfd of the thread, opened while the thread was blocked in
///   one of our requests (so it is that thread, not a namesake); an entry is used only after a
///   zero-timeout `poll` of the pidfd (about 0.5 us) says the thread has not exited. While it has
///   not, the id cannot belong to anyone else. Without `PIDFD_THREAD` (Linux < 6.9) only thread
///   group leaders are cached; other threads are looked up in full on every request.
/// - **The process id** (thread group id) of a live thread never changes, with one exception: a
///   non-leader thread that calls `execve` takes over the leader's id, and its old id is released,
///   which the pidfd reports as an exit.
/// - **Not the mount namespace.** A live thread can change it (`setns`, or `unshare(CLONE_NEWNS)`,
///   even unprivileged after `CLONE_NEWUSER`), and namespace inode numbers are reused once a
///   namespace is gone: a cached namespace could let a thread that left a task (or whose task
///   ended, its namespace's inode then given to a new task) open the new task's files. The owner
///   check must see the namespace the thread is in now, so it is read on every request (about
///   4 us).
/// - **Not the command name** either (`execve` and `prctl(PR_SET_NAME)` change it): the entry keeps
///   `/proc/<pid>/comm` open and `pread`s it per request (under 1 us, against 8 us for opening it
///   by path).
///
/// The cache holds at most [`CACHE_LIMIT`] threads (two descriptors each at most); when it is full,
/// entries of exited threads are dropped, then everything if that is not enough.
///
/// The namespace is the calling *thread's*: a thread may `unshare(CLONE_NEWNS)` on its own, and
/// the open happened in the thread's namespace. While the request is pending the thread is
/// blocked in the syscall, so its tid cannot be reused under us.
#[derive(Clone, Debug)]
pub struct ProcResolver {
    proc_root: PathBuf,
    cache: Arc<Mutex<HashMap<u32, Arc<Identity>>>>,
}

/// Most threads the resolver remembers (see [`ProcResolver`]).
pub const CACHE_LIMIT: usize = 256;

/// What stays true of a thread while it lives.
#[derive(Debug)]
struct Identity {
    /// Pidfd of the thread (a process pidfd for a leader without `PIDFD_THREAD`): readable once
    /// it has exited. `None` for an identity that is not cached.
    pidfd: Option<OwnedFd>,
    /// Its process id.
    pid: u32,
    /// `/proc/<pid>/comm`, open; shared by the cached threads of one process.
    comm: Arc<File>,
}

impl Identity {
    fn is_alive(&self) -> bool {
        let Some(pidfd) = &self.pidfd else { return false };
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        // Readable (or an error): the thread exited, its id may be reused.
        matches!(rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(0))
    }

    /// The process's command name now; empty if it cannot be read (the process is exiting).
    fn command(&self) -> String {
        let mut buf = [0u8; 64];
        match rustix::io::pread(&*self.comm, &mut buf, 0) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).trim_end().to_string(),
            Err(_) => String::new(),
        }
    }
}

impl Default for ProcResolver {
    fn default() -> Self {
        Self { proc_root: PathBuf::from("/proc"), cache: Arc::default() }
    }
}

impl ProcResolver {
    /// Resolver reading the host's `/proc`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Threads currently cached (for tests and benchmarks).
    pub fn cached_threads(&self) -> usize {
        self.lock_cache().len()
    }

    fn lock_cache(&self) -> MutexGuard<'_, HashMap<u32, Arc<Identity>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached identity of live thread `tid`, or a new one (cached when a pidfd could be had).
    fn identity(&self, tid: u32) -> io::Result<Arc<Identity>> {
        let cached = self.lock_cache().get(&tid).cloned();
        if let Some(identity) = cached {
            if identity.is_alive() {
                return Ok(identity);
            }
            self.lock_cache().remove(&tid);
        }
        let pid = pid_of(tid)?;
        let (pidfd, leader) = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => (Some(fd), true),
            // Not a thread group leader (EINVAL before Linux 6.9, ENOENT since).
            Err(Errno::INVAL | Errno::NOENT) => (pidfd_open(pid, PIDFD_THREAD).ok(), false),
            Err(e) => return Err(e.into()),
        };
        let dir = self.proc_root.join(tid.to_string());
        let process = if leader {
            tid
        } else {
            let status = fs::read_to_string(dir.join("status"))?;
            parse_tgid(&status).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid in status"))?
        };
        let Some(pidfd) = pidfd else {
            // No thread pidfd on this kernel: nothing to detect reuse with, so no caching.
            let comm = Arc::new(File::open(self.proc_root.join(process.to_string()).join("comm"))?);
            return Ok(Arc::new(Identity { pidfd: None, pid: process, comm }));
        };
        let mut cache = self.lock_cache();
        // A live cached thread of the same process: its process is this one, share its comm.
        let comm = match cache.values().find(|i| i.pid == process && i.is_alive()) {
            Some(sibling) => sibling.comm.clone(),
            None => Arc::new(File::open(self.proc_root.join(process.to_string()).join("comm"))?),
        };
        let identity = Arc::new(Identity { pidfd: Some(pidfd), pid: process, comm });
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, i| i.is_alive());
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(tid, identity.clone());
        Ok(identity)
    }
}

/// `PIDFD_THREAD` (= `O_EXCL`, Linux 6.9): a pidfd for any thread, readable when that thread exits.
const PIDFD_THREAD: PidfdFlags = PidfdFlags::from_bits_retain(0o200);

fn pid_of(tid: u32) -> io::Result<Pid> {
    i32::try_from(tid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad tid"))
}

impl CallerResolver for ProcResolver {
    fn resolve(&self, tid: u32) -> io::Result<Caller> {
        if tid == 0 {
            // Requests the kernel makes on its own behalf carry pid 0: nobody to check.
            return Err(io::Error::new(io::ErrorKind::NotFound, "request without a pid"));
        }
        // Namespace first, and always fresh: it is what access depends on.
        let link = fs::read_link(self.proc_root.join(tid.to_string()).join("ns/mnt"))?;
        let mnt_ns = parse_mnt_ns(&link.to_string_lossy())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad ns/mnt link"))?;
        let identity = self.identity(tid)?;
        Ok(Caller { pid: identity.pid, mnt_ns, command: identity.command() })
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

    /// A thread of this process that waits until told to exit: (its id, the release, its handle).
    fn parked_thread() -> (u32, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get() as u32).expect("send tid");
            let _ = done_rx.recv();
        });
        (rx.recv().expect("tid"), done_tx, h)
    }

    #[test]
    fn caches_a_thread_until_it_exits() {
        let resolver = ProcResolver::new();
        let (tid, done_tx, h) = parked_thread();
        let first = resolver.identity(tid).expect("resolve thread");
        let again = resolver.identity(tid).expect("resolve thread again");
        assert!(Arc::ptr_eq(&first, &again), "a live thread is served from the cache");
        assert!(first.is_alive());
        done_tx.send(()).expect("release thread");
        h.join().expect("thread");
        // Once the thread is gone its id may be reused: the entry must say so.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while first.is_alive() {
            assert!(std::time::Instant::now() < deadline, "pidfd never reported the exit");
            std::thread::yield_now();
        }
    }

    #[test]
    fn namespace_and_command_are_fresh_for_a_cached_process() {
        // A process that, on a line from us, execs into a new mount namespace: same pid, new
        // command, new namespace. The cached entry must not hide either change.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec unshare -m sleep 60"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let pid = child.id();
        let resolver = ProcResolver::new();
        let before = resolver.resolve(pid).expect("resolve sh");
        assert_eq!((before.pid, before.command.as_str()), (pid, "sh"));
        assert_eq!(resolver.cached_threads(), 1);
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(b"go\n").expect("write");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = resolver.resolve(pid).expect("resolve again");
            if now.command == "sleep" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never saw the exec: {now:?}");
            std::thread::yield_now();
        }
        // Once more: the namespace was read before the command in the call that saw "sleep".
        let after = resolver.resolve(pid).expect("resolve after the exec");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(resolver.cached_threads(), 1, "same process, same entry");
        assert_eq!(after.pid, pid);
        // `unshare -m` may be refused (no CAP_SYS_ADMIN): then the namespace stays the same.
        if rustix::process::geteuid().is_root() {
            assert_ne!(after.mnt_ns, before.mnt_ns, "the new namespace is seen at once");
        }
    }

    #[test]
    fn resolves_a_live_thread_to_its_process() {
        let (tid, done_tx, h) = parked_thread();
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
