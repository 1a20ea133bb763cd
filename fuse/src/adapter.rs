//! The only module that speaks fuser's API (it changes between versions): replies to kernel
//! requests by calling [`SecretFs`], sends cache invalidations through fuser's `Notifier`, and
//! starts the session.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption,
    Notifier, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyXattr, Request, Session, SessionACL, SessionUnmounter,
};

use crate::caller::RequestInfo;
use crate::fs::{Attr, FsError, Invalidation, Invalidator, NodeKind, Opened, SecretFs};

/// How long the kernel may cache names and attributes without asking again.
///
/// Correctness after a rotation or removal relies on invalidation (`inval_entry`,
/// `inval_inode`); the TTL only bounds the damage should a notification be lost: after it, a
/// cached name is looked up again and a changed inode number replaces it. It does not bear on
/// access: a cached dentry is shared by every caller of the superblock (a task, a container's
/// bind of the same directory, host root), but it only saves a LOOKUP, which reveals names and
/// sizes (visible to anyone who can reach the mount anyway); every open still reaches
/// [`SecretFs::open_file`] and its owner check, whatever the dentry cache holds. One second:
/// the revalidation it costs is one LOOKUP per name per second, nothing next to the opens.
const TTL: Duration = Duration::from_secs(1);

struct FuseAdapter {
    fs: Arc<SecretFs>,
    gate: Arc<Gate>,
}

/// Stops request handling for a hand-over. Every request holds the gate while it is handled;
/// [`Gate::freeze`] waits for those in flight, and from then on a request is not answered: its
/// thread waits until [`Gate::thaw`] (the hand-over failed) or the process exits (it succeeded).
/// The kernel keeps such a request as "read, not answered", and the successor has it sent
/// again (`FUSE_NOTIFY_RESEND`). Dropping it would answer it: fuser replies `EIO` to a request
/// whose reply is dropped.
#[derive(Default)]
pub(crate) struct Gate {
    in_flight: std::sync::RwLock<()>,
    frozen: std::sync::Mutex<bool>,
    thawed: std::sync::Condvar,
}

impl Gate {
    fn enter(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        use std::sync::PoisonError;
        loop {
            let guard = self.in_flight.read().unwrap_or_else(PoisonError::into_inner);
            let frozen = self.frozen.lock().unwrap_or_else(PoisonError::into_inner);
            if !*frozen {
                return guard;
            }
            drop(guard);
            let _unfrozen = self.thawed.wait_while(frozen, |frozen| *frozen).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Returns once no request is being handled and none will be.
    pub(crate) fn freeze(&self) {
        use std::sync::PoisonError;
        *self.frozen.lock().unwrap_or_else(PoisonError::into_inner) = true;
        // Taking the write side waits for every request that entered before.
        drop(self.in_flight.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// Serve again (a hand-over that did not happen); waiting requests proceed.
    pub(crate) fn thaw(&self) {
        *self.frozen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = false;
        self.thawed.notify_all();
    }
}

fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.to_errno())
}

fn request_info(req: &Request) -> RequestInfo {
    RequestInfo { tid: req.pid(), uid: req.uid(), gid: req.gid() }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Directory => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for FuseAdapter {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _gate = self.gate.enter();
        match self.fs.lookup(parent.0, name) {
            // Inodes are never reused, so the generation can stay 0.
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    // fuser's `batch_forget` calls this for each inode.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _gate = self.gate.enter();
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _gate = self.gate.enter();
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _gate = self.gate.enter();
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & (libc::O_TRUNC | libc::O_APPEND) != 0;
        match self.fs.open_file(&request_info(req), ino.0, write) {
            // The inode's content never changes (a new version is a new inode): its pages stay
            // cached across opens, so a read after the first open costs no round trip. Nothing
            // to flush on close either.
            Ok(Opened { fh, cache: true }) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH)
            }
            // A pinned file changes in place: every read reaches us.
            Ok(Opened { fh, cache: false }) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(&request_info(req), fh.0, offset, size) {
            Ok(slice) => reply.data(slice.expose_secret()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _gate = self.gate.enter();
        // Nothing to flush on a read-only filesystem. ENOSYS (rather than ok) makes the kernel
        // stop sending FLUSH for good, saving a round trip on every close(); fuser's default
        // would do the same but log a warning.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _gate = self.gate.enter();
        self.fs.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _gate = self.gate.enter();
        match self.fs.opendir(&request_info(req), ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _gate = self.gate.enter();
        let entries = match self.fs.readdir(ino.0) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(e)),
        };
        // The offset of an entry is the index of the next one.
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.kind), &*e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        let _gate = self.gate.enter();
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _gate = self.gate.enter();
        // An empty list: the size query gets 0, a buffer gets no bytes.
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }
}

/// Invalidation through the session's notifier.
struct NotifierInvalidator(Notifier);

impl Invalidator for NotifierInvalidator {
    fn invalidate(&self, what: &Invalidation) {
        let result = match what {
            // Offset 0, length 0: all cached pages, and the attributes (size, mtime).
            Invalidation::Inode(ino) => self.0.inval_inode(INodeNo(*ino), 0, 0),
            Invalidation::Entry { parent, name } => self.0.inval_entry(INodeNo(*parent), OsStr::new(&**name)),
        };
        if let Err(e) = result {
            tracing::warn!(?what, error = %e, "kernel cache invalidation failed");
        }
    }
}

/// A mounted session running on its own threads.
pub(crate) struct RunningSession {
    unmounter: SessionUnmounter,
    thread: Option<JoinHandle<io::Result<()>>>,
    gate: Arc<Gate>,
    invalidator: Arc<dyn Invalidator>,
    /// The connection's `/dev/fuse` descriptor (a duplicate: the session has its own).
    device: std::os::fd::OwnedFd,
    /// The protocol version negotiated at `FUSE_INIT`.
    version: (u32, u32),
}

impl RunningSession {
    /// Stop answering requests (see [`Gate`]).
    pub(crate) fn freeze(&self) {
        self.gate.freeze();
    }

    /// The session's invalidator (to put it back after a thaw).
    pub(crate) fn invalidator(&self) -> Arc<dyn Invalidator> {
        self.invalidator.clone()
    }

    /// Answer requests again.
    pub(crate) fn thaw(&self) {
        self.gate.thaw();
    }

    /// The connection's device descriptor.
    pub(crate) fn device(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.device.as_fd()
    }

    /// The protocol version negotiated at `FUSE_INIT`.
    pub(crate) fn version(&self) -> (u32, u32) {
        self.version
    }

    /// Unmount (not lazily: fails with `EBUSY` if the mount is in use).
    pub(crate) fn unmount(&mut self) -> io::Result<()> {
        self.unmounter.unmount()
    }

    /// Whether the session threads have exited (the kernel connection is gone).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Join the session thread if it has exited; otherwise leave it running detached.
    pub(crate) fn join_if_finished(&mut self) -> Option<io::Result<()>> {
        if !self.is_finished() {
            return None;
        }
        let thread = self.thread.take()?;
        Some(thread.join().unwrap_or_else(|_| Err(io::Error::other("fuse session thread panicked"))))
    }
}

fn session_config(threads: usize) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        // The kernel checks uid/gid/mode; without it anyone could read a root 0400 file.
        MountOption::DefaultPermissions,
        MountOption::FSName("hush".to_string()),
    ];
    // allow_other: tasks run as any uid. Our own owner check and default_permissions decide.
    config.acl = SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config
}

/// Mount `fs` at `path` and serve it on `threads` threads. Returns once the kernel handshake is
/// done, with the invalidator installed in `fs`.
pub(crate) fn start(fs: Arc<SecretFs>, path: &Path, threads: usize) -> io::Result<RunningSession> {
    let config = session_config(threads);
    let gate = Arc::new(Gate::default());
    let adapter = FuseAdapter { fs: fs.clone(), gate: gate.clone() };
    let session = Session::new(adapter, path, &config)?;
    let version = session.proto_version().map_or((7, 0), |v| (v.0, v.1));
    run(fs, session, gate, version)
}

/// Serve a connection another process mounted and initialised (a hand-over), on `threads`
/// threads: no mount, no `FUSE_INIT` (fuser patched: `Session::from_fd_initialized`).
pub(crate) fn resume(
    fs: Arc<SecretFs>,
    device: std::os::fd::OwnedFd,
    version: (u32, u32),
    threads: usize,
) -> io::Result<RunningSession> {
    let config = session_config(threads);
    let gate = Arc::new(Gate::default());
    let adapter = FuseAdapter { fs: fs.clone(), gate: gate.clone() };
    let session =
        Session::from_fd_initialized(adapter, device, config.acl, config, fuser::Version(version.0, version.1));
    run(fs, session, gate, version)
}

fn run(
    fs: Arc<SecretFs>,
    mut session: Session<FuseAdapter>,
    gate: Arc<Gate>,
    version: (u32, u32),
) -> io::Result<RunningSession> {
    use std::os::fd::AsFd;
    let device = session.as_fd().try_clone_to_owned()?;
    let invalidator: Arc<dyn Invalidator> = Arc::new(NotifierInvalidator(session.notifier()));
    fs.set_invalidator(Some(invalidator.clone()));
    let unmounter = session.unmount_callable();
    let thread = std::thread::Builder::new()
        .name("hush-fuse".to_string())
        .spawn(move || session.run())
        .inspect_err(|_| fs.set_invalidator(None))?;
    Ok(RunningSession { unmounter, thread: Some(thread), gate, invalidator, device, version })
}
