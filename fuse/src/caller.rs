//! Who is calling: maps the thread id the kernel gives us to its process and command name, with
//! a handle to read the thread's mount namespace fresh. The `/proc` implementation is used in
//! production; tests inject their own.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{CWD, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::owner::{Caller, ThreadProbe};

/// What the kernel says about a request's caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// Calling **thread** id (`fuser::Request::pid()`).
    pub tid: u32,
    /// Caller's fs uid.
    pub uid: u32,
    /// Caller's fs gid.
    pub gid: u32,
}

/// Resolves a request's thread (`fuser::Request::pid()`) to a [`Caller`].
///
/// # Security
/// The answer decides who may open a task's files: an implementation must never guess.
/// Return an error when the thread cannot be identified; the open is then denied.
pub trait CallerResolver: Send + Sync {
    /// Identify the thread of `req` (its id as seen in the mounting process's PID namespace).
    fn resolve(&self, req: &RequestInfo) -> io::Result<Caller>;
}

/// Reads `/proc`, with a per-thread cache of what cannot change while a thread lives.
///
/// For each request: the process id, a handle on the thread's `/proc/<tid>/ns` directory and the
/// process's command name, from a cache keyed by thread id; the owner check then reads the
/// thread's mount namespace fresh through that handle.
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
/// - **A handle, not the mount namespace.** A live thread can change its namespace (`setns`, or
///   `unshare(CLONE_NEWNS)`, even unprivileged after `CLONE_NEWUSER`). The entry keeps the
///   thread's `/proc/<tid>/ns` directory open (`O_PATH`) and each check reads the `mnt` link in it
///   (`readlinkat`): always the namespace the thread is in now, without walking `/proc/<tid>`
///   (about 25% cheaper than `readlink("/proc/<tid>/ns/mnt")`, measured). The directory is bound
///   to the thread itself, not to its number: once the thread is gone it answers `ENOENT`, even if
///   the number is reused.
/// - **The command name, for a moment.** `execve` and `prctl(PR_SET_NAME)` change it; it is a
///   hint for the audit trail chosen by the process anyway. The process's `/proc/<pid>/comm` is
///   kept open and re-read (`pread`) when the cached value is older than [`COMMAND_REFRESH`].
///
/// The cache holds at most [`CACHE_LIMIT`] threads (three descriptors each at most); when it is
/// full, entries of exited threads are dropped, then everything if that is not enough.
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

/// How long a process's command name is reused before it is read again.
pub const COMMAND_REFRESH: Duration = Duration::from_millis(100);

/// What stays true of a thread while it lives.
#[derive(Debug)]
struct Identity {
    /// Pidfd of the thread (a process pidfd for a leader without `PIDFD_THREAD`): readable once
    /// it has exited. `None` for an identity that is not cached.
    pidfd: Option<OwnedFd>,
    /// Its process id.
    pid: u32,
    /// The thread's `/proc/<tid>/ns` directory (`O_PATH`).
    ns_dir: Arc<NsDir>,
    /// The process's command name; shared by the cached threads of one process.
    comm: Arc<Comm>,
}

/// A thread's `/proc/<tid>/ns` directory, open.
#[derive(Debug)]
struct NsDir(OwnedFd);

impl ThreadProbe for NsDir {
    fn mount_namespace(&self) -> io::Result<u64> {
        let link = rustix::fs::readlinkat(&self.0, "mnt", Vec::with_capacity(32))?;
        parse_mnt_ns(&link.to_string_lossy())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad ns/mnt link"))
    }
}

/// `/proc/<pid>/comm`, open, and the last value read from it.
#[derive(Debug)]
struct Comm {
    file: File,
    last: Mutex<Option<(Instant, Arc<str>)>>,
}

impl Comm {
    fn open(path: PathBuf) -> io::Result<Self> {
        Ok(Self { file: File::open(path)?, last: Mutex::new(None) })
    }

    /// The command name, re-read when older than [`COMMAND_REFRESH`]; empty if it cannot be
    /// read (the process is exiting).
    fn get(&self) -> Arc<str> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, name)) = &*last
            && now.duration_since(*at) < COMMAND_REFRESH
        {
            return name.clone();
        }
        let mut buf = [0u8; 64];
        let name: Arc<str> = match rustix::io::pread(&self.file, &mut buf, 0) {
            Ok(n) => Arc::from(String::from_utf8_lossy(&buf[..n]).trim_end()),
            Err(_) => Arc::from(""),
        };
        *last = Some((now, name.clone()));
        name
    }
}

impl Identity {
    fn is_alive(&self) -> bool {
        let Some(pidfd) = &self.pidfd else { return false };
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        // Readable (or an error): the thread exited, its id may be reused.
        matches!(rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(0))
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
        let ns_dir = Arc::new(NsDir(rustix::fs::openat(
            CWD,
            dir.join("ns"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?));
        let process = if leader {
            tid
        } else {
            let status = fs::read_to_string(dir.join("status"))?;
            parse_tgid(&status).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid in status"))?
        };
        let comm_path = self.proc_root.join(process.to_string()).join("comm");
        let Some(pidfd) = pidfd else {
            // No thread pidfd on this kernel: nothing to detect reuse with, so no caching.
            return Ok(Arc::new(Identity {
                pidfd: None,
                pid: process,
                ns_dir,
                comm: Arc::new(Comm::open(comm_path)?),
            }));
        };
        let mut cache = self.lock_cache();
        // A live cached thread of the same process: its process is this one, share its comm.
        let comm = match cache.values().find(|i| i.pid == process && i.is_alive()) {
            Some(sibling) => sibling.comm.clone(),
            None => Arc::new(Comm::open(comm_path)?),
        };
        let identity = Arc::new(Identity { pidfd: Some(pidfd), pid: process, ns_dir, comm });
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
    fn resolve(&self, req: &RequestInfo) -> io::Result<Caller> {
        if req.tid == 0 {
            // Requests the kernel makes on its own behalf carry pid 0: nobody to check.
            return Err(io::Error::new(io::ErrorKind::NotFound, "request without a pid"));
        }
        let identity = self.identity(req.tid)?;
        Ok(Caller {
            tid: req.tid,
            pid: identity.pid,
            uid: req.uid,
            gid: req.gid,
            command: identity.comm.get(),
            probe: identity.ns_dir.clone(),
        })
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

/// The mount namespace inode of process `pid` (`/proc/<pid>/ns/mnt`). To record an owner, use
/// [`crate::MountNamespaceOwner::of_process`], which also holds the namespace.
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

    fn req(tid: u32) -> RequestInfo {
        RequestInfo { tid, uid: 0, gid: 0 }
    }

    #[test]
    fn resolves_own_process() {
        let me = std::process::id();
        let caller = ProcResolver::new().resolve(&req(me)).expect("resolve self");
        assert_eq!(caller.pid, me);
        assert_eq!(caller.mount_namespace().unwrap(), mount_namespace_of(me).expect("own ns"));
        assert!(!caller.command.is_empty());
        assert!(ProcResolver::new().resolve(&req(0)).is_err());
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
        // `spawn` returns once exec has closed our pipe, a moment before the kernel sets the name.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim_end() != "sh" {
            assert!(std::time::Instant::now() < deadline, "sh never started");
            std::thread::yield_now();
        }
        let resolver = ProcResolver::new();
        let before = resolver.resolve(&req(pid)).expect("resolve sh");
        assert_eq!((before.pid, &*before.command), (pid, "sh"));
        let ns_before = before.mount_namespace().expect("namespace of sh");
        assert_eq!(resolver.cached_threads(), 1);
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(b"go\n").expect("write");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = resolver.resolve(&req(pid)).expect("resolve again");
            if &*now.command == "sleep" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never saw the exec: {now:?}");
            std::thread::yield_now();
        }
        // Once more: the namespace was read before the command in the call that saw "sleep".
        let after = resolver.resolve(&req(pid)).expect("resolve after the exec");
        let (ns_after, ns_through_old_handle) = (after.mount_namespace().unwrap(), before.mount_namespace().unwrap());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(resolver.cached_threads(), 1, "same process, same entry");
        assert_eq!(after.pid, pid);
        // `unshare -m` may be refused (no CAP_SYS_ADMIN): then the namespace stays the same.
        if rustix::process::geteuid().is_root() {
            assert_ne!(ns_after, ns_before, "the new namespace is seen at once");
            // Even through the handle taken before the exec: it reads the thread's state now.
            assert_eq!(ns_through_old_handle, ns_after);
        }
    }

    #[test]
    fn resolves_a_live_thread_to_its_process() {
        let (tid, done_tx, h) = parked_thread();
        let caller = ProcResolver::new().resolve(&req(tid)).expect("resolve thread");
        done_tx.send(()).expect("release thread");
        h.join().expect("thread");
        assert_ne!(tid, std::process::id());
        assert_eq!(caller.pid, std::process::id());
        // The process's command, not the thread's name.
        let comm = fs::read_to_string(format!("/proc/{}/comm", caller.pid)).unwrap();
        assert_eq!(&*caller.command, comm.trim_end());
    }
}
