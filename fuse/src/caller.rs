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

use rustix::fs::{CWD, Mode, OFlags};

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
/// For each request: one `readlinkat` of the `mnt` link in the calling thread's `/proc/<tid>/ns`
/// directory, kept open (`O_PATH`) in a cache keyed by thread id, with the process id and the
/// process's command name cached beside it.
///
/// # Why one system call per request, and why none would not do
/// A live thread can change its mount namespace at any time (`setns`, or `unshare(CLONE_NEWNS)`,
/// even unprivileged after `CLONE_NEWUSER`), and the kernel tells nobody: no event, no counter
/// another process can watch. So the namespace must be read during each request, which is one
/// system call at least. While the request is pending the thread is blocked in its `open` and
/// only a thread can change its own namespaces, so a value read during the request stays true
/// until the request is answered: the owner check gets that value
/// ([`ThreadProbe::mount_namespace`]) instead of reading it again.
///
/// Measured on this machine kind (CPU time per call, another process's thread): this
/// `readlinkat` 2.0–2.5 µs; `fstatat` or `statx` of the same link 4.5–6.3 µs (they follow it to
/// the namespace inode); `readlinkat(fd, "")` on an `O_PATH|O_NOFOLLOW` descriptor of the link
/// itself 1.8–2.0 µs, not taken: it saves the lookup of `mnt` only, and a dead thread then
/// answers `EACCES`, the same as a refused `ptrace` access check, where the lookup answers
/// `ENOENT`. Most of the cost is the kernel's access check and naming of the namespace.
///
/// # What is cached, and why that is safe
/// - **The thread, through its `ns` directory.** The directory is bound to the thread itself,
///   not to its number: once the thread has exited, reading the link in it fails (`ENOENT`),
///   even if the number now belongs to another thread. So the read that gives the namespace also
///   proves the cached entry is still the calling thread (a thread id is unique among live
///   threads); when it fails the entry is dropped and the thread looked up afresh. No pidfd and
///   no `poll` are needed (that was a second system call per request).
/// - **The process id** (thread group id) of a live thread never changes, with one exception: a
///   non-leader thread that calls `execve` takes over the leader's id, and its old id is
///   released: its old `ns` directory then fails as for an exit.
/// - **The command name, for a moment.** `execve` and `prctl(PR_SET_NAME)` change it; it is a
///   hint for the audit trail chosen by the process anyway. The process's `/proc/<pid>/comm` is
///   kept open and re-read (`pread`) when the cached value is older than [`COMMAND_REFRESH`].
///
/// A new thread is looked up through one open `/proc/<tid>` directory (its `ns`, `status` and
/// the process's `comm`), and its namespace read last: if the thread exited (and its number was
/// reused) at any point in between, that read fails and so does the lookup.
///
/// The cache holds at most [`CACHE_LIMIT`] threads (two descriptors each); when it is full,
/// entries of exited threads are dropped, then everything if that is not enough.
///
/// The namespace is the calling *thread's*: a thread may `unshare(CLONE_NEWNS)` on its own, and
/// the open happened in the thread's namespace.
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
    /// Its process id.
    pid: u32,
    /// The thread's `/proc/<tid>/ns` directory (`O_PATH`).
    ns_dir: OwnedFd,
    /// The process's command name.
    comm: Comm,
}

impl Identity {
    /// The thread's mount namespace now; fails once the thread has exited.
    fn mount_namespace(&self) -> io::Result<u64> {
        let mut buf = [0u8; 64];
        let n = rustix::fs::readlinkat_raw(&self.ns_dir, c"mnt", &mut buf[..])?;
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(parse_mnt_ns)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad ns/mnt link"))
    }
}

/// A thread's mount namespace as read during the request it made (see [`ProcResolver`]).
#[derive(Debug)]
struct ReadDuringRequest(u64);

impl ThreadProbe for ReadDuringRequest {
    fn mount_namespace(&self) -> io::Result<u64> {
        Ok(self.0)
    }
}

/// `/proc/<pid>/comm`, open, and the last value read from it.
#[derive(Debug)]
struct Comm {
    file: File,
    last: Mutex<Option<(Instant, Arc<str>)>>,
}

impl Comm {
    fn open(dir: &OwnedFd, path: &str) -> io::Result<Self> {
        let fd = rustix::fs::openat(dir, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Self { file: File::from(fd), last: Mutex::new(None) })
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

    /// The identity of live thread `tid` and its mount namespace now: from the cache when the
    /// cached thread is still alive, else looked up and cached.
    /// `/proc/ID` of a thread or process, as a path-only fd to open its entries relative to.
    fn proc_dir(&self, id: u32) -> io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Ok(rustix::fs::openat(CWD, self.proc_root.join(id.to_string()), flags, Mode::empty())?)
    }

    fn identity(&self, tid: u32) -> io::Result<(Arc<Identity>, u64)> {
        let cached = self.lock_cache().get(&tid).cloned();
        if let Some(identity) = cached {
            match identity.mount_namespace() {
                Ok(ns) => return Ok((identity, ns)),
                // Exited (ENOENT; ESRCH while it is being torn down): the number may be another's.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {
                    self.lock_cache().remove(&tid);
                }
                Err(e) => return Err(e),
            }
        }
        let dir = self.proc_dir(tid)?;
        let ns_dir = rustix::fs::openat(&dir, "ns", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let status_fd = rustix::fs::openat(&dir, "status", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        let status = io::read_to_string(File::from(status_fd))?;
        let pid = parse_tgid(&status).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid in status"))?;
        // The thread is alive (its status was read through its own directory), so `pid` is its
        // process's: the read below fails if it exited since.
        let comm = if pid == tid { Comm::open(&dir, "comm")? } else { Comm::open(&self.proc_dir(pid)?, "comm")? };
        let identity = Arc::new(Identity { pid, ns_dir, comm });
        let ns = identity.mount_namespace()?;
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, i| i.mount_namespace().is_ok());
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(tid, identity.clone());
        Ok((identity, ns))
    }
}

impl CallerResolver for ProcResolver {
    fn resolve(&self, req: &RequestInfo) -> io::Result<Caller> {
        if req.tid == 0 {
            // Requests the kernel makes on its own behalf carry pid 0: nobody to check.
            return Err(io::Error::new(io::ErrorKind::NotFound, "request without a pid"));
        }
        let (identity, mount_namespace) = self.identity(req.tid)?;
        Ok(Caller {
            tid: req.tid,
            pid: identity.pid,
            uid: req.uid,
            gid: req.gid,
            command: identity.comm.get(),
            probe: Arc::new(ReadDuringRequest(mount_namespace)),
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
        let (first, ns) = resolver.identity(tid).expect("resolve thread");
        let (again, _) = resolver.identity(tid).expect("resolve thread again");
        assert!(Arc::ptr_eq(&first, &again), "a live thread is served from the cache");
        assert_eq!(ns, mount_namespace_of(std::process::id()).unwrap());
        done_tx.send(()).expect("release thread");
        h.join().expect("thread");
        // Once the thread is gone its id may be reused: the entry's directory must say so.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while first.mount_namespace().is_ok() {
            assert!(std::time::Instant::now() < deadline, "the ns directory still reads after the exit");
            std::thread::yield_now();
        }
        // And the resolver no longer answers for it from the cache.
        match resolver.identity(tid) {
            Ok((now, _)) => assert!(!Arc::ptr_eq(&now, &first), "a dead thread's entry was used"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
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
        let ns_after = after.mount_namespace().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(resolver.cached_threads(), 1, "same process, same entry");
        assert_eq!(after.pid, pid);
        // `unshare -m` may be refused (no CAP_SYS_ADMIN): then the namespace stays the same.
        if rustix::process::geteuid().is_root() {
            assert_ne!(ns_after, ns_before, "the new namespace is seen at once");
            // A caller's namespace is the one read during its own request.
            assert_eq!(before.mount_namespace().unwrap(), ns_before);
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
