//! The filesystem core, free of fuser: the operations the kernel and the agent ask for, on the
//! inode table ([`crate::tree`]), with an owner check ([`crate::owner`]) on every open and an
//! access event ([`crate::event`]) for every outcome. `adapter` only translates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use crate::caller::{CallerResolver, ProcResolver, RequestInfo};
use crate::event::{AccessEvent, AccessOp, DenyReason, EventSink};
use crate::owner::{Caller, Decision, Identity, TaskOwner};
use crate::secret::Plaintext;
use crate::tree::{
    Body, Node, Task, Tree, attr_of, find_file, insert_file, new_dir, task_parent, validate_files, validate_task_id,
};

/// Inode number of the mount root.
pub const ROOT_INO: u64 = 1;

/// Whether a file is a secret or a config (for the audit trail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A secret.
    Secret,
    /// A config.
    Config,
}

/// What a served file is, as reported in access events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Secret or config.
    pub kind: FileKind,
    /// The secret's or config's name in the vault (not the path it is served at). Shared: every
    /// open's event and handle carry it.
    pub name: Arc<str>,
    /// The version being served; [`SecretFs::update_content`] changes it.
    pub version: u64,
}

/// One file of a task, as the agent hands it over.
#[derive(Clone, Debug)]
pub struct FileSpec {
    /// Path relative to the task directory, e.g. `secrets/db_password`. Intermediate directories
    /// are created implicitly. No empty, `.` or `..` components; not absolute.
    pub path: String,
    /// Owner uid the kernel checks permissions against (`default_permissions`).
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits only (at most `0o777`), e.g. `0o400`.
    pub mode: u32,
    /// The content, shared so that rotation swaps an `Arc`.
    pub content: Arc<Plaintext>,
    /// What the file is, for access events.
    pub meta: FileMeta,
    /// The file is bind-mounted on its own (a config at an absolute target), not reached
    /// through a bound directory. A bind holds the inode it was made of, so a new version must
    /// replace this inode's content in place rather than come as a new inode; such files are
    /// served with direct I/O (every read reaches us: no page cache to go stale). Other files
    /// get one inode per content version and are served from the kernel's page cache.
    pub pinned: bool,
}

/// How an open file is to be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The file handle.
    pub fh: u64,
    /// Serve from the page cache and keep it across opens (`FOPEN_KEEP_CACHE`): the inode's
    /// content never changes. `false` for pinned files (direct I/O).
    pub cache: bool,
}

/// Directory or regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory (the root, a task directory, or an intermediate directory).
    Directory,
    /// A read-only regular file.
    File,
}

/// Attributes of a node, as `stat` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number; never reused while the filesystem lives.
    pub ino: u64,
    /// Directory or file.
    pub kind: NodeKind,
    /// Content length for files, 0 for directories.
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Link count: 1 for files, 2 + subdirectories for directories.
    pub nlink: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Last content change (files) or creation (directories).
    pub mtime: SystemTime,
}

/// One directory entry, `.` and `..` included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode of the entry.
    pub ino: u64,
    /// Directory or file.
    pub kind: NodeKind,
    /// Entry name.
    pub name: Arc<str>,
}

/// Bytes answered to a read: a range of a shared [`Plaintext`], so no extra copy is made.
pub struct ReadSlice {
    content: Arc<Plaintext>,
    start: usize,
    end: usize,
}

impl ReadSlice {
    /// The bytes to hand to the kernel.
    pub fn expose_secret(&self) -> &[u8] {
        &self.content.expose_secret()[self.start..self.end]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the read is at or past the end of the file.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

impl fmt::Debug for ReadSlice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadSlice([REDACTED; {} bytes])", self.len())
    }
}

/// Errors of filesystem operations; [`FsError::to_errno`] is the only translation to errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// No such inode or name.
    #[error("no such file or directory")]
    NotFound,
    /// A directory operation on a file.
    #[error("not a directory")]
    NotADirectory,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsADirectory,
    /// The caller is not the task's owner (or the task has no owner yet).
    #[error("permission denied")]
    PermissionDenied,
    /// Write access was asked for.
    #[error("read-only file system")]
    ReadOnly,
    /// Unknown file handle.
    #[error("bad file handle")]
    BadHandle,
    /// The file was removed while open: its content is no longer served.
    #[error("file was removed")]
    Revoked,
}

impl FsError {
    /// The errno the kernel passes to the caller.
    pub fn to_errno(self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::PermissionDenied => libc::EACCES,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            // The kernel has no "revoked"; EIO tells the reader the data is gone.
            FsError::Revoked => libc::EIO,
        }
    }
}

/// Errors of the agent-facing operations.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// Task ids are `[a-z0-9-_.]+`, not `.` or `..`, at most 255 bytes.
    #[error("invalid task id {0:?}")]
    InvalidTaskId(String),
    /// `add_task` for an id that is already served.
    #[error("task {0:?} already exists")]
    TaskExists(String),
    /// No task with this id.
    #[error("no task {0:?}")]
    NoSuchTask(String),
    /// A file path is unusable (see [`FileSpec::path`]).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A mode with bits beyond `0o777` (setuid, setgid, sticky, file type).
    #[error("invalid mode {mode:#o} for {path:?}: only permission bits are allowed")]
    InvalidMode {
        /// The file's path.
        path: String,
        /// The mode as given.
        mode: u32,
    },
    /// `update_content` for a path the task does not have.
    #[error("no file {path:?} in task {task_id:?}")]
    NoSuchFile {
        /// The task.
        task_id: String,
        /// The path asked for.
        path: String,
    },
}

/// A kernel cache entry that must be dropped after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Cached data and attributes (size, mtime) of an inode.
    Inode(u64),
    /// The name `name` in directory `parent`.
    Entry {
        /// Directory inode.
        parent: u64,
        /// Entry name.
        name: Arc<str>,
    },
}

/// Tells the kernel to forget cached state. The mount layer installs one backed by fuser's
/// `Notifier`; it is called after the change, with no lock of ours held.
pub trait Invalidator: Send + Sync {
    /// Drop the cache entry. Failures are the implementation's to log: the change is done.
    fn invalidate(&self, what: &Invalidation);
}

/// State of an open file: the content as of `open` (a reader never sees two versions mixed),
/// `None` once the task is removed.
#[derive(Clone)]
pub(crate) struct Handle {
    pub(crate) ino: u64,
    pub(crate) task: Arc<str>,
    pub(crate) path: Arc<str>,
    pub(crate) meta: FileMeta,
    pub(crate) content: Option<Arc<Plaintext>>,
    pub(crate) opener_tid: u32,
    pub(crate) opener: Identity,
}

/// The in-memory secrets filesystem. All methods take `&self`; share it as `Arc<SecretFs>`
/// between the agent and the mount.
///
/// Layout: root → one directory per task id → the task's files at their relative paths.
/// Everything is read-only; directories are `0o555` root:root.
///
/// # Security
/// Only callers the task's [`TaskOwner`] accepts can open a task's files (for a
/// [`crate::MountNamespaceOwner`]: processes in its mount namespace, whatever their uid, host
/// root included); the kernel also checks uid/gid/mode (`default_permissions`).
/// Names and sizes are visible to anyone who can reach the mount: the kernel's dentry cache
/// is shared between namespaces, so lookups cannot be reliably restricted.
pub struct SecretFs {
    pub(crate) tree: RwLock<Tree>,
    pub(crate) handles: Mutex<HashMap<u64, Handle>>,
    pub(crate) next_fh: AtomicU64,
    resolver: Arc<dyn CallerResolver>,
    events: EventSink,
    /// Whether opens and reads are events (refusals always are).
    open_events: bool,
    invalidator: RwLock<Option<Arc<dyn Invalidator>>>,
}

impl fmt::Debug for SecretFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretFs")
            .field("tasks", &self.read_tree().tasks.len())
            .field("dropped_events", &self.dropped_events())
            .finish_non_exhaustive()
    }
}

impl Default for SecretFs {
    fn default() -> Self {
        Self::new()
    }
}

impl SecretFs {
    /// An empty filesystem identifying callers through `/proc`, with no event sink.
    pub fn new() -> Self {
        let now = SystemTime::now();
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                parent: ROOT_INO,
                task: None,
                rel: Arc::from(""),
                body: Body::Dir { children: BTreeMap::new(), mtime: now },
                lookups: AtomicU64::new(0),
                retired: false,
            },
        );
        Self {
            tree: RwLock::new(Tree { nodes, tasks: HashMap::new(), next_ino: ROOT_INO + 1 }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            resolver: Arc::new(ProcResolver::new()),
            events: EventSink::default(),
            open_events: true,
            invalidator: RwLock::new(None),
        }
    }

    /// Replace the `/proc` caller resolver (tests; a different `/proc`).
    pub fn with_resolver(mut self, resolver: Arc<dyn CallerResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Record no `Open` or `Read` events (refusals are still recorded): for a node whose operator
    /// turned the audit of reads off (`hush-agent --no-open-audit`, which the vault records).
    pub fn without_open_events(mut self) -> Self {
        self.open_events = false;
        self
    }

    /// Send access events to `sink`: a `SyncSender`, or an [`crate::event_queue`] (which takes
    /// memory only for the events it holds). Sending never blocks a filesystem thread: when the
    /// queue is full (or closed) the event is dropped and counted in [`SecretFs::dropped_events`].
    ///
    /// Drain it in batches (wake every few ms, then `try_recv` until empty) rather than blocking
    /// in `recv`: a receiver blocked on the channel is woken for every event, which costs more
    /// CPU per open than the event itself. Size the channel for the burst between drains.
    pub fn with_event_sink(mut self, sink: impl Into<crate::event::EventQueue>) -> Self {
        self.events = EventSink::new(sink);
        self
    }

    /// Install (or remove) the kernel cache invalidator. [`crate::mount`] does this; only a
    /// custom mount layer needs to call it.
    pub fn set_invalidator(&self, invalidator: Option<Arc<dyn Invalidator>>) {
        *self.invalidator.write().unwrap_or_else(PoisonError::into_inner) = invalidator;
    }

    /// Events lost because the sink was full or closed.
    pub fn dropped_events(&self) -> u64 {
        self.events.dropped()
    }

    /// Ids of the tasks being served, sorted.
    pub fn task_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read_tree().tasks.keys().map(|k| k.to_string()).collect();
        ids.sort();
        ids
    }

    // ---- agent-facing operations ----

    /// Serve a new task directory with `files`. `owner` may be `None` when the task's mount
    /// namespace does not exist yet; nobody can open the files until [`SecretFs::set_owner`].
    ///
    /// Fails, changing nothing, if the task exists or any path or mode is invalid, or two files
    /// collide (same path, or a file where another needs a directory).
    pub fn add_task(&self, task_id: &str, owner: Option<TaskOwner>, files: Vec<FileSpec>) -> Result<(), TaskError> {
        validate_task_id(task_id)?;
        validate_files(&files)?;
        let now = SystemTime::now();
        let task: Arc<str> = Arc::from(task_id);

        let mut tree = self.write_tree();
        if tree.tasks.contains_key(task_id) {
            return Err(TaskError::TaskExists(task_id.to_string()));
        }
        let (parent, dir_name) = task_parent(&mut tree, task_id, ROOT_INO, now);
        let dir = tree.alloc();
        let mut inodes = vec![dir];
        tree.nodes.insert(dir, new_dir(parent, &task, "", now));
        tree.children_mut(parent).insert(Arc::from(dir_name), dir);

        for spec in files {
            insert_file(&mut tree, dir, &task, spec, now, &mut inodes);
        }
        tree.tasks.insert(task, Task { dir, owner, inodes });
        Ok(())
    }

    /// Changes a running task's files in place (a service update): the task directory and every
    /// directory keep their inodes, so binds of them inside the task stay valid; unchanged files
    /// keep theirs; a changed file gets a new inode (a pinned one changes in place, see
    /// [`FileSpec::pinned`]); new paths appear; the rest disappear (open handles of those are
    /// cut off, as in [`SecretFs::remove_task`]). Descriptors opened before keep their version.
    pub fn set_files(&self, task_id: &str, files: Vec<FileSpec>) -> Result<(), TaskError> {
        validate_files(&files)?;
        let now = SystemTime::now();
        let mut invalidations = Vec::new();
        let mut removed = HashSet::new();
        {
            let mut tree = self.write_tree();
            let (task, current) = tree
                .tasks
                .get_key_value(task_id)
                .map(|(name, t)| (name.clone(), (t.dir, t.inodes.clone())))
                .ok_or_else(|| TaskError::NoSuchTask(task_id.to_string()))?;
            let (dir, inodes) = current;
            let mut files_by_path: HashMap<Arc<str>, u64> = HashMap::new();
            let mut kept = Vec::with_capacity(inodes.len());
            for ino in inodes {
                match tree.nodes.get(&ino) {
                    Some(Node { retired: true, .. }) | None => {}
                    Some(Node { body: Body::File(_), rel, .. }) => {
                        files_by_path.insert(rel.clone(), ino);
                    }
                    Some(_) => kept.push(ino),
                }
            }
            for spec in files {
                match files_by_path.remove(spec.path.as_str()) {
                    Some(ino) => match tree.nodes.get_mut(&ino).map(|n| &mut n.body) {
                        Some(Body::File(file)) if file.is(&spec) => kept.push(ino),
                        Some(Body::File(file)) if file.pinned => {
                            file.uid = spec.uid;
                            file.gid = spec.gid;
                            file.mode = spec.mode as u16;
                            file.size = spec.content.len() as u64;
                            file.content = spec.content;
                            file.meta = spec.meta;
                            file.mtime = now;
                            file.pinned = spec.pinned;
                            invalidations.push(Invalidation::Inode(ino));
                            kept.push(ino);
                        }
                        _ => {
                            let (new, entry) = tree.new_version(ino, spec, now);
                            invalidations.push(entry);
                            kept.push(new);
                        }
                    },
                    None => insert_file(&mut tree, dir, &task, spec, now, &mut kept),
                }
            }
            for (rel, ino) in files_by_path {
                let parent = tree.nodes.get(&ino).map(|n| n.parent).expect("listed above");
                let name: Arc<str> = Arc::from(rel.rsplit('/').next().expect("paths are not empty"));
                tree.children_mut(parent).remove(&name);
                tree.nodes.remove(&ino);
                removed.insert(ino);
                invalidations.push(Invalidation::Entry { parent, name });
                invalidations.push(Invalidation::Inode(ino));
            }
            // Retired versions stay listed until the kernel forgets them.
            let listed = tree.tasks.get(task_id).map(|t| t.inodes.clone()).unwrap_or_default();
            kept.extend(listed.into_iter().filter(|i| tree.nodes.get(i).is_some_and(|n| n.retired)));
            kept.sort_unstable();
            kept.dedup();
            if let Some(entry) = tree.tasks.get_mut(task_id) {
                entry.inodes = kept;
            }
        }
        for h in self.lock_handles().values_mut() {
            if removed.contains(&h.ino) {
                h.content = None;
            }
        }
        for invalidation in &invalidations {
            self.invalidate(invalidation);
        }
        Ok(())
    }

    /// Set (or change) who may open the task's files.
    pub fn set_owner(&self, task_id: &str, owner: TaskOwner) -> Result<(), TaskError> {
        let mut tree = self.write_tree();
        let task = tree.tasks.get_mut(task_id).ok_or_else(|| TaskError::NoSuchTask(task_id.to_string()))?;
        task.owner = Some(owner);
        Ok(())
    }

    /// Stop serving a task: its directory disappears, open files answer reads with `EIO`, and
    /// the kernel is told to drop the cached entries.
    pub fn remove_task(&self, task_id: &str) -> Result<(), TaskError> {
        let (parent, name, inodes) = {
            let mut tree = self.write_tree();
            let task = tree.tasks.remove(task_id).ok_or_else(|| TaskError::NoSuchTask(task_id.to_string()))?;
            let parent = tree.nodes.get(&task.dir).map_or(ROOT_INO, |n| n.parent);
            for ino in &task.inodes {
                tree.nodes.remove(ino);
            }
            let name: Arc<str> = Arc::from(task_id.rsplit('/').next().expect("task ids are not empty"));
            tree.children_mut(parent).remove(&name);
            (parent, name, task.inodes)
        };
        // Revoke open handles now rather than at close: the plaintext is zeroed as soon as
        // nothing else holds it.
        let removed: HashSet<u64> = inodes.iter().copied().collect();
        for h in self.lock_handles().values_mut() {
            if removed.contains(&h.ino) {
                h.content = None;
            }
        }
        self.invalidate(&Invalidation::Entry { parent, name });
        for ino in inodes {
            self.invalidate(&Invalidation::Inode(ino));
        }
        Ok(())
    }

    /// Rotate a file's content: every open from the moment this returns reads `content` (and
    /// `stat` shows its size); descriptors already open keep reading the version they opened.
    ///
    /// The new version is a new inode in the same directory entry, and the kernel is told to
    /// drop that entry, so the next lookup finds the new inode while pages cached for the old
    /// one keep serving the old descriptors. A pinned file changes in place instead.
    pub fn update_content(
        &self,
        task_id: &str,
        path: &str,
        content: Arc<Plaintext>,
        version: u64,
    ) -> Result<(), TaskError> {
        let now = SystemTime::now();
        let invalidation = {
            let mut tree = self.write_tree();
            let ino = find_file(&tree, task_id, path)?;
            let Some(Body::File(f)) = tree.nodes.get_mut(&ino).map(|n| &mut n.body) else {
                unreachable!("find_file returns files")
            };
            if f.pinned {
                f.size = content.len() as u64;
                f.content = content;
                f.meta.version = version;
                f.mtime = now;
                Invalidation::Inode(ino)
            } else {
                let spec = FileSpec {
                    path: path.to_string(),
                    uid: f.uid,
                    gid: f.gid,
                    mode: u32::from(f.mode),
                    content,
                    meta: FileMeta { version, ..f.meta.clone() },
                    pinned: false,
                };
                tree.new_version(ino, spec, now).1
            }
        };
        self.invalidate(&invalidation);
        Ok(())
    }

    // ---- filesystem operations (called by the adapter) ----

    /// Look `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, FsError> {
        let tree = self.read_tree();
        let node = tree.nodes.get(&parent).ok_or(FsError::NotFound)?;
        let Body::Dir { children, .. } = &node.body else {
            return Err(FsError::NotADirectory);
        };
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let ino = *children.get(name).ok_or(FsError::NotFound)?;
        // The kernel now holds one more lookup of it (released by `forget`).
        tree.nodes[&ino].lookups.fetch_add(1, Ordering::AcqRel);
        Ok(attr_of(&tree, ino))
    }

    /// The kernel dropped `n` lookups of `ino` (its inode left the kernel's cache).
    pub fn forget(&self, ino: u64, n: u64) {
        // Rare (an inode leaving the kernel's cache): the write lock keeps it simple.
        self.write_tree().forget(ino, n);
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let tree = self.read_tree();
        if !tree.nodes.contains_key(&ino) {
            return Err(FsError::NotFound);
        }
        Ok(attr_of(&tree, ino))
    }

    /// Entries of directory `ino`, `.` and `..` first, then by name.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let tree = self.read_tree();
        let node = tree.nodes.get(&ino).ok_or(FsError::NotFound)?;
        let Body::Dir { children, .. } = &node.body else {
            return Err(FsError::NotADirectory);
        };
        let mut out = Vec::with_capacity(children.len() + 2);
        out.push(DirEntry { ino, kind: NodeKind::Directory, name: Arc::from(".") });
        out.push(DirEntry { ino: node.parent, kind: NodeKind::Directory, name: Arc::from("..") });
        for (name, &child) in children {
            let kind = match tree.nodes.get(&child).map(|n| &n.body) {
                Some(Body::File(_)) => NodeKind::File,
                _ => NodeKind::Directory,
            };
            out.push(DirEntry { ino: child, kind, name: name.clone() });
        }
        Ok(out)
    }

    /// Open directory `ino` for listing. The root is open to all; a task's directories only to
    /// its owner (a refusal is an access event).
    pub fn opendir(&self, req: &RequestInfo, ino: u64) -> Result<(), FsError> {
        if ino == ROOT_INO {
            return Ok(());
        }
        let caller = self.resolver.resolve(req);
        let tree = self.read_tree();
        let node = tree.nodes.get(&ino).ok_or(FsError::NotFound)?;
        if !matches!(node.body, Body::Dir { .. }) {
            return Err(FsError::NotADirectory);
        }
        // A group directory (`services/`) is listed by anyone, as the root is.
        let Some(task) = node.task.clone() else { return Ok(()) };
        let owner = tree.tasks.get(&task).and_then(|t| t.owner.clone());
        let rel = node.rel.clone();
        drop(tree);
        let decision = decide(req, owner.as_ref(), &caller, false);
        match decision.verdict {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.events.emit(AccessEvent::new(decision.identity, task, rel, None, AccessOp::Denied(reason), 0));
                Err(FsError::PermissionDenied)
            }
        }
    }

    /// Open file `ino` for reading and return a file handle. Refused unless the task's owner
    /// accepts the caller and read-only access is asked for. Every outcome is an event.
    pub fn open(&self, req: &RequestInfo, ino: u64, write: bool) -> Result<u64, FsError> {
        self.open_file(req, ino, write).map(|opened| opened.fh)
    }

    /// [`SecretFs::open`], also saying how the file is to be served.
    ///
    /// An older version of a file can still be opened while the kernel knows its inode: by a
    /// path walk that began before the rotation returned (it found the name before the kernel
    /// dropped it), or by re-opening an old descriptor through `/proc/PID/fd`. It opens as the
    /// version it is. A path walk that begins after the rotation returned cannot reach it.
    pub fn open_file(&self, req: &RequestInfo, ino: u64, write: bool) -> Result<Opened, FsError> {
        // Identify the caller before taking any lock: it reads /proc.
        let caller = self.resolver.resolve(req);
        let tree = self.read_tree();
        let node = tree.nodes.get(&ino).ok_or(FsError::NotFound)?;
        let Body::File(file) = &node.body else {
            return Err(FsError::IsADirectory);
        };
        let cache = !file.pinned;
        let task = node.task.clone().expect("files belong to a task");
        let owner = tree.tasks.get(&task).and_then(|t| t.owner.clone());
        let (path, meta, content) = (node.rel.clone(), file.meta.clone(), file.content.clone());
        drop(tree);

        // The owner check runs with no lock held: it may read /proc or a cache of its own.
        let Decision { verdict, identity } = decide(req, owner.as_ref(), &caller, write);
        if let Err(reason) = verdict {
            self.events.emit(AccessEvent::new(identity, task, path, Some(meta), AccessOp::Denied(reason), 0));
            return Err(match reason {
                DenyReason::WriteAccess => FsError::ReadOnly,
                _ => FsError::PermissionDenied,
            });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let opened = (self.open_events && self.events.is_enabled()).then(|| {
            AccessEvent::new(identity.clone(), task.clone(), path.clone(), Some(meta.clone()), AccessOp::Open, 0)
        });
        self.lock_handles().insert(
            fh,
            Handle { ino, task, path, meta, content: Some(content), opener_tid: req.tid, opener: identity },
        );
        if let Some(opened) = opened {
            self.events.emit(opened);
        }
        Ok(Opened { fh, cache })
    }

    /// Read up to `size` bytes at `offset` from open file `fh`. Reads returning data are events.
    pub fn read(&self, req: &RequestInfo, fh: u64, offset: u64, size: u32) -> Result<ReadSlice, FsError> {
        let handle = self.lock_handles().get(&fh).cloned().ok_or(FsError::BadHandle)?;
        let content = match handle.content {
            // Also catches an open that raced with remove_task and registered its handle late.
            Some(c) if self.read_tree().nodes.contains_key(&handle.ino) => c,
            _ => return Err(FsError::Revoked),
        };
        let len = content.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        let slice = ReadSlice { content, start, end };
        if !slice.is_empty() && self.open_events && self.events.is_enabled() {
            // Usually the opener reads; otherwise (an fd passed on, another thread) look again.
            let who = if req.tid == handle.opener_tid {
                handle.opener
            } else {
                match self.resolver.resolve(req) {
                    Ok(caller) => caller.identity(),
                    Err(_) => unknown(req),
                }
            };
            self.events.emit(AccessEvent::new(
                who,
                handle.task,
                handle.path,
                Some(handle.meta),
                AccessOp::Read,
                slice.len() as u64,
            ));
        }
        Ok(slice)
    }

    /// Close file handle `fh`.
    pub fn release(&self, fh: u64) {
        self.lock_handles().remove(&fh);
    }

    // ---- internals ----

    pub(crate) fn read_tree(&self) -> RwLockReadGuard<'_, Tree> {
        // A panic elsewhere never leaves the tree half-updated in a way reads could trip on.
        self.tree.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_tree(&self) -> RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_handles(&self) -> MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn invalidate(&self, what: &Invalidation) {
        let inv = self.invalidator.read().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(inv) = inv {
            inv.invalidate(what);
        }
    }
}

/// The access rule: read-only, an owner set, a known caller, and the owner's yes.
fn decide(req: &RequestInfo, owner: Option<&TaskOwner>, caller: &io::Result<Caller>, write: bool) -> Decision {
    let Ok(caller) = caller else {
        return Decision::deny(DenyReason::UnknownCaller, unknown(req));
    };
    if write {
        return Decision::deny(DenyReason::WriteAccess, caller.identity());
    }
    match owner {
        None => Decision::deny(DenyReason::NoOwner, caller.identity()),
        Some(owner) => owner.check(caller),
    }
}

/// An unidentified caller is still reported, by its thread id.
fn unknown(req: &RequestInfo) -> Identity {
    Identity { pid: req.tid, uid: req.uid, gid: req.gid, command: Arc::from(""), tags: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::{OwnerCheck, ThreadProbe};
    use std::sync::mpsc::{Receiver, sync_channel};

    const OWNER_NS: u64 = 4026532001;
    const OTHER_NS: u64 = 4026532002;
    /// Thread ids the fake resolver knows: 100 (owner ns, process 10), 101 (a second thread of
    /// process 10), 200 (another namespace), anything else is unknown.
    struct FakeResolver;

    struct FixedNs(u64);

    impl ThreadProbe for FixedNs {
        fn mount_namespace(&self) -> io::Result<u64> {
            Ok(self.0)
        }
    }

    impl CallerResolver for FakeResolver {
        fn resolve(&self, req: &RequestInfo) -> io::Result<Caller> {
            let (pid, mnt_ns, command) = match req.tid {
                100 | 101 => (10, OWNER_NS, "app"),
                200 => (20, OTHER_NS, "intruder"),
                _ => return Err(io::Error::from(io::ErrorKind::NotFound)),
            };
            let probe = Arc::new(FixedNs(mnt_ns));
            Ok(Caller { tid: req.tid, pid, uid: req.uid, gid: req.gid, command: Arc::from(command), probe })
        }
    }

    /// An owner by namespace inode alone (what the filesystem sees of a [`crate::MountNamespaceOwner`]).
    struct NsOwner(u64);

    impl OwnerCheck for NsOwner {
        fn check(&self, caller: &Caller) -> Decision {
            match caller.mount_namespace() {
                Ok(ns) if ns == self.0 => Decision::allow(caller.identity()),
                _ => Decision::deny(DenyReason::NotOwner, caller.identity()),
            }
        }

        fn describe(&self) -> String {
            format!("ns {}", self.0)
        }
    }

    fn ns_owner(ns: u64) -> TaskOwner {
        TaskOwner::new(NsOwner(ns))
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Invalidation>>);

    impl Invalidator for Recorder {
        fn invalidate(&self, what: &Invalidation) {
            self.0.lock().unwrap().push(what.clone());
        }
    }

    const OWNER: RequestInfo = RequestInfo { tid: 100, uid: 1000, gid: 1000 };
    const OWNER_THREAD: RequestInfo = RequestInfo { tid: 101, uid: 1000, gid: 1000 };
    const INTRUDER: RequestInfo = RequestInfo { tid: 200, uid: 0, gid: 0 };
    const UNKNOWN: RequestInfo = RequestInfo { tid: 999, uid: 0, gid: 0 };

    fn spec(path: &str, content: &[u8]) -> FileSpec {
        FileSpec {
            path: path.to_string(),
            uid: 1000,
            gid: 1000,
            mode: 0o400,
            content: Arc::new(Plaintext::new(content.to_vec())),
            meta: FileMeta { kind: FileKind::Secret, name: path.rsplit('/').next().unwrap().into(), version: 1 },
            pinned: false,
        }
    }

    fn fs_with_events(cap: usize) -> (SecretFs, Receiver<AccessEvent>) {
        let (tx, rx) = sync_channel(cap);
        let fs = SecretFs::new().with_resolver(Arc::new(FakeResolver)).with_event_sink(tx);
        (fs, rx)
    }

    /// A filesystem with task "web.1" owned by OWNER_NS holding two files.
    fn web_fs() -> (SecretFs, Receiver<AccessEvent>) {
        let (fs, rx) = fs_with_events(64);
        fs.add_task(
            "web.1",
            Some(ns_owner(OWNER_NS)),
            vec![spec("secrets/db_password", b"hunter2"), spec("configs/0", b"listen: 80\n")],
        )
        .unwrap();
        (fs, rx)
    }

    fn ino(fs: &SecretFs, path: &str) -> u64 {
        let mut ino = ROOT_INO;
        for c in path.split('/') {
            ino = fs.lookup(ino, OsStr::new(c)).unwrap().ino;
        }
        ino
    }

    fn read_all(fs: &SecretFs, req: &RequestInfo, fh: u64) -> Vec<u8> {
        fs.read(req, fh, 0, 4096).unwrap().expose_secret().to_vec()
    }

    fn add_err(files: Vec<FileSpec>) -> TaskError {
        SecretFs::new().add_task("t", None, files).unwrap_err()
    }

    #[test]
    fn rejects_bad_paths() {
        for (path, reason) in [
            ("", "empty path"),
            ("/etc/passwd", "absolute path"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("../x", "`.` or `..` component"),
            ("a/./b", "`.` or `..` component"),
            ("a/..", "`.` or `..` component"),
            ("a\0b", "NUL byte"),
        ] {
            assert_eq!(
                add_err(vec![spec(path, b"x")]),
                TaskError::InvalidPath { path: path.to_string(), reason },
                "{path:?}"
            );
        }
        let long = "x".repeat(256);
        assert!(matches!(add_err(vec![spec(&long, b"x")]), TaskError::InvalidPath { .. }));
    }

    #[test]
    fn rejects_colliding_paths() {
        assert_eq!(
            add_err(vec![spec("a/b", b"1"), spec("a/b", b"2")]),
            TaskError::InvalidPath { path: "a/b".into(), reason: "duplicate path" }
        );
        for files in [vec![spec("a", b"1"), spec("a/b", b"2")], vec![spec("x/a/b", b"2"), spec("x/a", b"1")]] {
            assert!(matches!(add_err(files), TaskError::InvalidPath { reason: "is both a file and a directory", .. }));
        }
        // Siblings sharing a directory are fine.
        SecretFs::new().add_task("t", None, vec![spec("a/b", b"1"), spec("a/c", b"2")]).unwrap();
    }

    #[test]
    fn rejects_bad_modes_and_task_ids() {
        let mut s = spec("a", b"x");
        s.mode = 0o4755;
        assert!(matches!(add_err(vec![s]), TaskError::InvalidMode { .. }));
        let fs = SecretFs::new();
        for id in ["", ".", "..", "Web", "a/b/c", "A/b", "a/", "/b", "a/..", "a/b c", "a b", &"x".repeat(256)] {
            assert_eq!(fs.add_task(id, None, vec![]), Err(TaskError::InvalidTaskId(id.to_string())));
        }
        fs.add_task("web_1.task-2", None, vec![]).unwrap();
        assert_eq!(fs.add_task("web_1.task-2", None, vec![]), Err(TaskError::TaskExists("web_1.task-2".into())));
    }

    #[test]
    fn tasks_in_a_group_directory() {
        let (fs, _rx) = fs_with_events(8);
        let rec = Arc::new(Recorder::default());
        fs.set_invalidator(Some(rec.clone()));
        fs.add_task("services/Web", Some(ns_owner(OWNER_NS)), vec![spec("run/secrets/db", b"x")]).unwrap();
        fs.add_task("services/api", None, vec![]).unwrap();
        let names = |ino| -> Vec<String> { fs.readdir(ino).unwrap().iter().map(|e| e.name.to_string()).collect() };
        assert_eq!(names(ROOT_INO), [".", "..", "services"]);
        let group = ino(&fs, "services");
        assert_eq!(names(group), [".", "..", "Web", "api"]);
        // The group is listed by anyone; the task's directory only by its owner.
        fs.opendir(&INTRUDER, group).unwrap();
        assert_eq!(fs.opendir(&INTRUDER, ino(&fs, "services/Web")), Err(FsError::PermissionDenied));
        let file = ino(&fs, "services/Web/run/secrets/db");
        assert_eq!(fs.open(&INTRUDER, file, false), Err(FsError::PermissionDenied));
        assert_eq!(read_all(&fs, &OWNER, fs.open(&OWNER, file, false).unwrap()), b"x");
        fs.update_content("services/Web", "run/secrets/db", Arc::new(Plaintext::new(b"y".to_vec())), 2).unwrap();
        fs.remove_task("services/Web").unwrap();
        assert_eq!(names(group), [".", "..", "api"]);
        assert!(rec.0.lock().unwrap().contains(&Invalidation::Entry { parent: group, name: Arc::from("Web") }));
        assert_eq!(fs.task_ids(), ["services/api"]);
    }

    #[test]
    fn failed_add_changes_nothing() {
        let fs = SecretFs::new();
        fs.add_task("t", None, vec![spec("ok", b"1"), spec("../bad", b"2")]).unwrap_err();
        assert!(fs.task_ids().is_empty());
        assert_eq!(fs.readdir(ROOT_INO).unwrap().len(), 2);
    }

    #[test]
    fn lookup_getattr_readdir() {
        let (fs, _rx) = web_fs();
        let names = |ino| -> Vec<String> { fs.readdir(ino).unwrap().iter().map(|e| e.name.to_string()).collect() };
        assert_eq!(names(ROOT_INO), [".", "..", "web.1"]);
        let task = ino(&fs, "web.1");
        assert_eq!(names(task), [".", "..", "configs", "secrets"]);
        assert_eq!(fs.readdir(task).unwrap()[1].ino, ROOT_INO);

        let dir = fs.getattr(task).unwrap();
        assert_eq!((dir.kind, dir.perm, dir.uid, dir.gid, dir.nlink), (NodeKind::Directory, 0o555, 0, 0, 4));
        let file = fs.getattr(ino(&fs, "web.1/secrets/db_password")).unwrap();
        assert_eq!(
            (file.kind, file.size, file.perm, file.uid, file.gid, file.nlink),
            (NodeKind::File, 7, 0o400, 1000, 1000, 1)
        );
        assert_eq!(fs.lookup(task, OsStr::new("nope")), Err(FsError::NotFound));
        assert_eq!(fs.lookup(file.ino, OsStr::new("x")), Err(FsError::NotADirectory));
        assert_eq!(fs.readdir(file.ino), Err(FsError::NotADirectory));
        assert_eq!(fs.getattr(9999), Err(FsError::NotFound));
        assert_eq!(fs.task_ids(), ["web.1"]);
    }

    #[test]
    fn owner_reads_with_offsets() {
        let (fs, _rx) = web_fs();
        let file = ino(&fs, "web.1/secrets/db_password");
        let fh = fs.open(&OWNER, file, false).unwrap();
        assert_eq!(read_all(&fs, &OWNER, fh), b"hunter2");
        assert_eq!(fs.read(&OWNER, fh, 2, 3).unwrap().expose_secret(), b"nte");
        assert!(fs.read(&OWNER, fh, 7, 10).unwrap().is_empty());
        assert!(fs.read(&OWNER, fh, u64::MAX, u32::MAX).unwrap().is_empty());
        fs.release(fh);
        assert_eq!(fs.read(&OWNER, fh, 0, 1).unwrap_err(), FsError::BadHandle);
        assert_eq!(fs.open(&OWNER, ino(&fs, "web.1"), false), Err(FsError::IsADirectory));
    }

    #[test]
    fn non_owners_are_refused() {
        let (fs, _rx) = web_fs();
        let file = ino(&fs, "web.1/secrets/db_password");
        let task = ino(&fs, "web.1");
        assert_eq!(fs.open(&INTRUDER, file, false), Err(FsError::PermissionDenied));
        assert_eq!(fs.open(&UNKNOWN, file, false), Err(FsError::PermissionDenied));
        assert_eq!(fs.open(&OWNER, file, true), Err(FsError::ReadOnly));
        assert_eq!(fs.opendir(&INTRUDER, task), Err(FsError::PermissionDenied));
        assert_eq!(fs.opendir(&INTRUDER, ino(&fs, "web.1/secrets")), Err(FsError::PermissionDenied));
        fs.opendir(&OWNER, task).unwrap();
        fs.opendir(&INTRUDER, ROOT_INO).unwrap();
    }

    #[test]
    fn nobody_reads_until_an_owner_is_set() {
        let (fs, _rx) = fs_with_events(8);
        fs.add_task("t", None, vec![spec("s", b"x")]).unwrap();
        let file = ino(&fs, "t/s");
        assert_eq!(fs.open(&OWNER, file, false), Err(FsError::PermissionDenied));
        fs.set_owner("t", ns_owner(OWNER_NS)).unwrap();
        fs.open(&OWNER, file, false).unwrap();
        fs.set_owner("t", ns_owner(OTHER_NS)).unwrap();
        assert_eq!(fs.open(&OWNER, file, false), Err(FsError::PermissionDenied));
        fs.open(&INTRUDER, file, false).unwrap();
        assert_eq!(fs.set_owner("nope", ns_owner(1)), Err(TaskError::NoSuchTask("nope".into())));
    }

    fn entry(parent: u64, name: &str) -> Invalidation {
        Invalidation::Entry { parent, name: Arc::from(name) }
    }

    #[test]
    fn rotation_makes_a_new_inode_and_old_handles_keep_their_version() {
        let (fs, _rx) = web_fs();
        let rec = Arc::new(Recorder::default());
        fs.set_invalidator(Some(rec.clone()));
        let dir = ino(&fs, "web.1/secrets");
        let old = ino(&fs, "web.1/secrets/db_password");
        let old_fh = fs.open(&OWNER, old, false).unwrap();
        assert!(fs.open_file(&OWNER, old, false).unwrap().cache, "served from the page cache");

        fs.update_content("web.1", "secrets/db_password", Arc::new(Plaintext::new(b"correct horse".to_vec())), 2)
            .unwrap();
        // A new inode under the same name; the kernel is told to forget the name only.
        let new = ino(&fs, "web.1/secrets/db_password");
        assert_ne!(new, old);
        assert_eq!(*rec.0.lock().unwrap(), [entry(dir, "db_password")]);
        assert_eq!(fs.getattr(new).unwrap().size, 13);
        // The old inode is kept while the kernel knows it (looked up above): an old descriptor's
        // fstat still works and shows its version's size; opening it (a path walk begun before
        // the rotation) gets that version.
        assert_eq!(fs.getattr(old).unwrap().size, 7);
        assert_eq!(read_all(&fs, &OWNER, fs.open(&OWNER, old, false).unwrap()), b"hunter2");

        let fh = fs.open(&OWNER, new, false).unwrap();
        assert_eq!(read_all(&fs, &OWNER, fh), b"correct horse");
        assert_eq!(read_all(&fs, &OWNER, old_fh), b"hunter2");
        // Once the kernel forgets the old inode (never while a descriptor of it is open), it is gone.
        fs.release(old_fh);
        fs.forget(old, u64::MAX);
        assert_eq!(fs.getattr(old), Err(FsError::NotFound));

        // Never looked up: replaced and dropped at once.
        fs.update_content("web.1", "secrets/db_password", Arc::new(Plaintext::new(b"v3".to_vec())), 3).unwrap();
        let v3 = fs.readdir(dir).unwrap().into_iter().find(|e| &*e.name == "db_password").unwrap().ino;
        fs.update_content("web.1", "secrets/db_password", Arc::new(Plaintext::new(b"v4".to_vec())), 4).unwrap();
        assert_eq!(fs.getattr(v3), Err(FsError::NotFound));

        for (task, path) in [("web.1", "secrets"), ("web.1", "nope"), ("web.1", "secrets/db_password/x")] {
            assert_eq!(
                fs.update_content(task, path, Arc::new(Plaintext::new(vec![])), 3),
                Err(TaskError::NoSuchFile { task_id: task.into(), path: path.into() })
            );
        }
        assert_eq!(
            fs.update_content("nope", "x", Arc::new(Plaintext::new(vec![])), 3),
            Err(TaskError::NoSuchTask("nope".into()))
        );
    }

    #[test]
    fn pinned_files_change_in_place_with_direct_io() {
        let (fs, _rx) = fs_with_events(8);
        let mut pinned = spec("root/etc/app.conf", b"a=1");
        pinned.pinned = true;
        fs.add_task("t", Some(ns_owner(OWNER_NS)), vec![pinned.clone()]).unwrap();
        let rec = Arc::new(Recorder::default());
        fs.set_invalidator(Some(rec.clone()));
        let file = ino(&fs, "t/root/etc/app.conf");
        let old = fs.open_file(&OWNER, file, false).unwrap();
        assert!(!old.cache, "direct I/O");
        fs.update_content("t", "root/etc/app.conf", Arc::new(Plaintext::new(b"a=22".to_vec())), 2).unwrap();
        assert_eq!(ino(&fs, "t/root/etc/app.conf"), file, "a bind of it stays valid");
        assert_eq!(*rec.0.lock().unwrap(), [Invalidation::Inode(file)]);
        assert_eq!(fs.getattr(file).unwrap().size, 4);
        assert_eq!(read_all(&fs, &OWNER, fs.open(&OWNER, file, false).unwrap()), b"a=22");
        assert_eq!(read_all(&fs, &OWNER, old.fh), b"a=1");
        // A service update changing it: still in place.
        pinned.meta.version = 3;
        pinned.content = Arc::new(Plaintext::new(b"a=333".to_vec()));
        fs.set_files("t", vec![pinned]).unwrap();
        assert_eq!(ino(&fs, "t/root/etc/app.conf"), file);
        assert_eq!(read_all(&fs, &OWNER, fs.open(&OWNER, file, false).unwrap()), b"a=333");
    }

    #[test]
    fn set_files_keeps_unchanged_files_and_every_directory() {
        let (fs, _rx) = web_fs();
        let rec = Arc::new(Recorder::default());
        fs.set_invalidator(Some(rec.clone()));
        let task = ino(&fs, "web.1");
        let secrets = ino(&fs, "web.1/secrets");
        let changed = ino(&fs, "web.1/secrets/db_password");
        let gone = ino(&fs, "web.1/configs/0");
        let changed_fh = fs.open(&OWNER, changed, false).unwrap();
        let gone_fh = fs.open(&OWNER, gone, false).unwrap();

        let mut v2 = spec("secrets/db_password", b"hunter3");
        v2.meta.version = 2;
        fs.set_files("web.1", vec![v2.clone(), spec("secrets/api_key", b"k")]).unwrap();
        // Same directories (binds of them stay valid); the changed file is a new version.
        assert_eq!((ino(&fs, "web.1"), ino(&fs, "web.1/secrets")), (task, secrets));
        let now = ino(&fs, "web.1/secrets/db_password");
        assert_ne!(now, changed);
        assert_eq!(read_all(&fs, &OWNER, fs.open(&OWNER, now, false).unwrap()), b"hunter3");
        assert_eq!(read_all(&fs, &OWNER, changed_fh), b"hunter2", "opened before: keeps its version");
        let added = ino(&fs, "web.1/secrets/api_key");
        assert_eq!(read_all(&fs, &OWNER, fs.open(&OWNER, added, false).unwrap()), b"k");
        // The dropped file is gone, its open handle cut off, and the kernel told.
        assert_eq!(fs.getattr(gone), Err(FsError::NotFound));
        assert_eq!(fs.read(&OWNER, gone_fh, 0, 10).unwrap_err(), FsError::Revoked);
        {
            let inv = rec.0.lock().unwrap();
            assert!(inv.contains(&entry(secrets, "db_password")));
            assert!(inv.contains(&Invalidation::Inode(gone)));
        }
        // The same files again: nothing changes, nothing is invalidated.
        rec.0.lock().unwrap().clear();
        fs.set_files("web.1", vec![v2, spec("secrets/api_key", b"k")]).unwrap();
        assert_eq!(ino(&fs, "web.1/secrets/db_password"), now);
        assert!(rec.0.lock().unwrap().is_empty());
        // The owner is unchanged: an intruder is still refused.
        assert!(fs.open(&INTRUDER, now, false).is_err());
        assert_eq!(fs.set_files("nope", vec![]), Err(TaskError::NoSuchTask("nope".into())));
    }

    #[test]
    fn remove_task_drops_everything() {
        let (fs, _rx) = web_fs();
        let rec = Arc::new(Recorder::default());
        fs.set_invalidator(Some(rec.clone()));
        let task = ino(&fs, "web.1");
        let file = ino(&fs, "web.1/secrets/db_password");
        let content = {
            let fh = fs.open(&OWNER, file, false).unwrap();
            fs.read(&OWNER, fh, 0, 1).unwrap().content.clone()
        };
        let fh = fs.open(&OWNER, file, false).unwrap();

        fs.remove_task("web.1").unwrap();
        assert_eq!(fs.lookup(ROOT_INO, OsStr::new("web.1")), Err(FsError::NotFound));
        assert_eq!(fs.getattr(task), Err(FsError::NotFound));
        assert_eq!(fs.getattr(file), Err(FsError::NotFound));
        assert_eq!(fs.read(&OWNER, fh, 0, 10).unwrap_err(), FsError::Revoked);
        // Only our clone still holds the plaintext: the handles let go of it.
        assert_eq!(Arc::strong_count(&content), 1);
        let inv = rec.0.lock().unwrap();
        assert_eq!(inv[0], Invalidation::Entry { parent: ROOT_INO, name: Arc::from("web.1") });
        assert!(inv.contains(&Invalidation::Inode(file)));
        assert_eq!(inv.len(), 1 + 5); // the entry, then the task dir, 2 dirs and 2 files
        drop(inv);
        assert_eq!(fs.remove_task("web.1"), Err(TaskError::NoSuchTask("web.1".into())));
        // The id can be served again, with fresh inodes.
        fs.add_task("web.1", None, vec![spec("a", b"1")]).unwrap();
        assert!(ino(&fs, "web.1") > file);
    }

    #[test]
    fn events_describe_each_access() {
        let (fs, rx) = web_fs();
        let file = ino(&fs, "web.1/secrets/db_password");
        let fh = fs.open(&OWNER, file, false).unwrap();
        fs.read(&OWNER, fh, 0, 4).unwrap();
        fs.read(&OWNER_THREAD, fh, 4, 100).unwrap();
        fs.read(&OWNER, fh, 7, 100).unwrap(); // EOF: no data, no event
        fs.open(&INTRUDER, file, false).unwrap_err();
        fs.open(&UNKNOWN, file, false).unwrap_err();
        fs.opendir(&INTRUDER, ino(&fs, "web.1")).unwrap_err();

        let evs: Vec<AccessEvent> = rx.try_iter().collect();
        let summary: Vec<_> = evs.iter().map(|e| (e.op, e.pid, e.uid, &*e.command, e.bytes)).collect();
        assert_eq!(
            summary,
            [
                (AccessOp::Open, 10, 1000, "app", 0),
                (AccessOp::Read, 10, 1000, "app", 4),
                (AccessOp::Read, 10, 1000, "app", 3),
                (AccessOp::Denied(DenyReason::NotOwner), 20, 0, "intruder", 0),
                (AccessOp::Denied(DenyReason::UnknownCaller), 999, 0, "", 0),
                (AccessOp::Denied(DenyReason::NotOwner), 20, 0, "intruder", 0),
            ]
        );
        assert_eq!(&*evs[0].task_id, "web.1");
        assert_eq!(&*evs[0].path, "secrets/db_password");
        assert_eq!(evs[0].meta, Some(FileMeta { kind: FileKind::Secret, name: "db_password".into(), version: 1 }));
        assert_eq!(evs[5].meta, None);
        assert_eq!(&*evs[5].path, "");
        // No content anywhere in what could be logged.
        let printed = format!("{evs:?} {fs:?} {:?}", fs.read(&OWNER, fh, 0, 7).unwrap());
        assert!(!printed.contains("hunter2"), "{printed}");
        let spec_dbg = format!("{:?}", spec("a", b"hunter2"));
        assert!(!spec_dbg.contains("hunter2") && spec_dbg.contains("REDACTED"));
    }

    #[test]
    fn without_open_events_only_refusals_are_recorded() {
        let (tx, rx) = sync_channel(64);
        let fs = SecretFs::new().with_resolver(Arc::new(FakeResolver)).with_event_sink(tx).without_open_events();
        fs.add_task("t", Some(ns_owner(OWNER_NS)), vec![spec("s", b"xyz")]).unwrap();
        let file = ino(&fs, "t/s");
        for _ in 0..3 {
            assert_eq!(read_all(&fs, &OWNER, fs.open(&OWNER, file, false).unwrap()), b"xyz");
        }
        assert_eq!(fs.open(&INTRUDER, file, false), Err(FsError::PermissionDenied));
        let ops: Vec<AccessOp> = rx.try_iter().map(|e| e.op).collect();
        assert_eq!(ops, [AccessOp::Denied(DenyReason::NotOwner)]);
    }

    #[test]
    fn full_sink_drops_and_counts() {
        let (fs, rx) = fs_with_events(1);
        fs.add_task("t", Some(ns_owner(OWNER_NS)), vec![spec("s", b"x")]).unwrap();
        let file = ino(&fs, "t/s");
        fs.open(&OWNER, file, false).unwrap();
        fs.open(&OWNER, file, false).unwrap();
        fs.open(&OWNER, file, false).unwrap();
        assert_eq!(fs.dropped_events(), 2);
        assert_eq!(rx.try_iter().count(), 1);
        drop(rx);
        fs.open(&OWNER, file, false).unwrap();
        assert_eq!(fs.dropped_events(), 3);
    }
}
