//! Handing the filesystem to a successor process (an agent restart or upgrade): everything the
//! kernel has been told — inode numbers and their lookup counts, open file handles, retired
//! versions still open — so that a successor serving the same FUSE connection answers every
//! request as this process would have.
//!
//! [`SecretFs::export`] gives an [`Export`]: the metadata ([`FsState`], serialisable, holding no
//! plaintext), the content table it refers to by index (each distinct content once), and the
//! mount namespace descriptors of `hush run` owners. [`SecretFs::import`] rebuilds a fresh
//! filesystem from them, after checking that the metadata is consistent (a reference to a
//! missing inode or content is refused, never a panic later). The agent carries the three to
//! its successor (a sealed memfd and `SCM_RIGHTS`); this module knows nothing of how.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fs::{FileKind, FileMeta, FileSpec, Handle, ROOT_INO, SecretFs};
use crate::mnt_ns::MountNamespaceOwner;
use crate::owner::{Identity, TaskOwner};
use crate::secret::Plaintext;
use crate::tree::{Body, FileNode, Node, Task, Tree};

/// The filesystem's metadata as handed over. Contents are indices into [`Export::contents`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FsState {
    /// Next inode number to hand out (numbers are never reused while the kernel may know them).
    pub next_ino: u64,
    /// Next file handle.
    pub next_fh: u64,
    /// Every inode, the root included.
    pub nodes: Vec<NodeState>,
    /// Every task (and service) directory.
    pub tasks: Vec<TaskState>,
    /// Every open file handle.
    pub handles: Vec<HandleState>,
}

/// One inode.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    /// Inode number.
    pub ino: u64,
    /// Parent directory.
    pub parent: u64,
    /// Owning task (`None` for the root and group directories).
    pub task: Option<String>,
    /// Path relative to the task directory.
    pub rel: String,
    /// Lookups the kernel holds.
    pub lookups: u64,
    /// Replaced by a newer version, kept until the kernel forgets it.
    pub retired: bool,
    /// Directory or file.
    pub body: BodyState,
}

/// A directory's entries or a file's attributes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum BodyState {
    /// A directory.
    Dir {
        /// Name → inode.
        children: Vec<(String, u64)>,
        /// Creation time (seconds, nanoseconds since the epoch).
        mtime: (u64, u32),
    },
    /// A file.
    File {
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
        /// Permission bits.
        mode: u16,
        /// Index into the content table.
        content: usize,
        /// What it is, for events.
        meta: MetaState,
        /// Last change (seconds, nanoseconds since the epoch).
        mtime: (u64, u32),
        /// Changes in place (see [`FileSpec::pinned`]).
        pinned: bool,
    },
}

/// [`FileMeta`] as handed over.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetaState {
    /// `true` for a secret, `false` for a config.
    pub secret: bool,
    /// Name in the vault.
    pub name: String,
    /// Version served.
    pub version: u64,
}

/// One task directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskState {
    /// Task id (`services/NAME` for a service directory).
    pub id: String,
    /// Its directory's inode.
    pub dir: u64,
    /// Every inode of the task.
    pub inodes: Vec<u64>,
    /// Who may open its files.
    pub owner: OwnerState,
}

/// A task's owner as handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerState {
    /// No owner yet.
    None,
    /// A mount namespace: index into [`Export::namespaces`].
    Namespace(usize),
    /// Another kind of owner (a service's containers): the successor makes it again.
    Other,
}

/// One open file handle.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HandleState {
    /// File handle number the kernel holds.
    pub fh: u64,
    /// Inode it was opened on.
    pub ino: u64,
    /// Task.
    pub task: String,
    /// Path in the task.
    pub path: String,
    /// What it is.
    pub meta: MetaState,
    /// Index into the content table; `None` once revoked.
    pub content: Option<usize>,
    /// Thread that opened it.
    pub opener_tid: u32,
    /// Who opened it (for read events).
    pub opener: IdentityState,
}

/// [`Identity`] as handed over.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityState {
    /// Process id.
    pub pid: u32,
    /// Uid.
    pub uid: u32,
    /// Gid.
    pub gid: u32,
    /// Command name.
    pub command: String,
    /// Owner-specific facts.
    pub tags: Option<Vec<(String, String)>>,
}

/// What [`SecretFs::export`] gives.
pub struct Export {
    /// The metadata.
    pub state: FsState,
    /// Contents, each once; [`BodyState::File::content`] and handles index this.
    pub contents: Vec<Arc<Plaintext>>,
    /// Duplicated descriptors of the owners' mount namespaces.
    pub namespaces: Vec<OwnedFd>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("nodes", &self.state.nodes.len())
            .field("contents", &self.contents.len())
            .field("namespaces", &self.namespaces.len())
            .finish()
    }
}

/// A handed-over state that does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A reference to a missing inode, content or namespace, or a duplicate.
    #[error("inconsistent hand-over state: {0}")]
    Inconsistent(String),
    /// A namespace descriptor that is not one.
    #[error("hand-over namespace descriptor: {0}")]
    Namespace(std::io::Error),
}

/// One task directory as served now: what the agent rebuilds its own view from.
#[derive(Debug)]
pub struct ServedTask {
    /// Task id.
    pub id: String,
    /// Its owner.
    pub owner: Option<TaskOwner>,
    /// Its current files (retired versions left out).
    pub files: Vec<FileSpec>,
}

fn time_of(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn time_from((secs, nanos): (u64, u32)) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
}

fn meta_of(m: &FileMeta) -> MetaState {
    MetaState { secret: m.kind == FileKind::Secret, name: m.name.to_string(), version: m.version }
}

fn meta_from(m: &MetaState) -> FileMeta {
    FileMeta {
        kind: if m.secret { FileKind::Secret } else { FileKind::Config },
        name: m.name.as_str().into(),
        version: m.version,
    }
}

/// Tag keys are `&'static str`: the few distinct keys an owner check uses are interned once.
fn intern(key: &str) -> &'static str {
    static KEYS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut keys = KEYS.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(k) = keys.get(key) {
        return k;
    }
    let k: &'static str = Box::leak(key.to_string().into_boxed_str());
    keys.insert(k);
    k
}

fn identity_of(i: &Identity) -> IdentityState {
    IdentityState {
        pid: i.pid,
        uid: i.uid,
        gid: i.gid,
        command: i.command.to_string(),
        tags: i.tags.as_ref().map(|t| t.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
    }
}

fn identity_from(i: &IdentityState) -> Identity {
    Identity {
        pid: i.pid,
        uid: i.uid,
        gid: i.gid,
        command: Arc::from(i.command.as_str()),
        tags: i.tags.as_ref().map(|t| t.iter().map(|(k, v)| (intern(k), Arc::from(v.as_str()))).collect()),
    }
}

/// Content table under construction: each distinct `Arc` once.
#[derive(Default)]
struct Contents {
    list: Vec<Arc<Plaintext>>,
    index: HashMap<*const Plaintext, usize>,
}

impl Contents {
    fn add(&mut self, c: &Arc<Plaintext>) -> usize {
        *self.index.entry(Arc::as_ptr(c)).or_insert_with(|| {
            self.list.push(c.clone());
            self.list.len() - 1
        })
    }
}

impl SecretFs {
    /// The whole state, for a successor. Takes the tree and handle locks together, so the
    /// picture is consistent; call it once nothing serves requests any more (the mount is
    /// frozen, see [`crate::MountGuard::freeze`]), or requests answered after it are lost.
    pub fn export(&self) -> std::io::Result<Export> {
        let tree = self.read_tree();
        let handles = self.lock_handles();
        let mut contents = Contents::default();
        let mut namespaces = Vec::new();
        let mut nodes: Vec<NodeState> = tree
            .nodes
            .iter()
            .map(|(&ino, n)| NodeState {
                ino,
                parent: n.parent,
                task: n.task.as_ref().map(|t| t.to_string()),
                rel: n.rel.to_string(),
                lookups: n.lookups.load(Ordering::Acquire),
                retired: n.retired,
                body: match &n.body {
                    Body::Dir { children, mtime } => BodyState::Dir {
                        children: children.iter().map(|(k, &v)| (k.to_string(), v)).collect(),
                        mtime: time_of(*mtime),
                    },
                    Body::File(f) => BodyState::File {
                        uid: f.uid,
                        gid: f.gid,
                        mode: f.mode,
                        content: contents.add(&f.content),
                        meta: meta_of(&f.meta),
                        mtime: time_of(f.mtime),
                        pinned: f.pinned,
                    },
                },
            })
            .collect();
        nodes.sort_by_key(|n| n.ino);
        let mut tasks = Vec::with_capacity(tree.tasks.len());
        for (id, t) in &tree.tasks {
            let owner = match &t.owner {
                None => OwnerState::None,
                Some(owner) => match owner.as_namespace() {
                    Some(ns) => {
                        namespaces.push(ns.as_fd().try_clone_to_owned()?);
                        OwnerState::Namespace(namespaces.len() - 1)
                    }
                    None => OwnerState::Other,
                },
            };
            tasks.push(TaskState { id: id.to_string(), dir: t.dir, inodes: t.inodes.clone(), owner });
        }
        let handles = handles
            .iter()
            .map(|(&fh, h)| HandleState {
                fh,
                ino: h.ino,
                task: h.task.to_string(),
                path: h.path.to_string(),
                meta: meta_of(&h.meta),
                content: h.content.as_ref().map(|c| contents.add(c)),
                opener_tid: h.opener_tid,
                opener: identity_of(&h.opener),
            })
            .collect();
        let state =
            FsState { next_ino: tree.next_ino, next_fh: self.next_fh.load(Ordering::Acquire), nodes, tasks, handles };
        Ok(Export { state, contents: contents.list, namespaces })
    }

    /// Replaces this (new, empty) filesystem's state by a predecessor's. Owners that are not
    /// namespaces come from `other_owner(task_id)` (`None` leaves the task without an owner:
    /// nobody opens it until one is set). Nothing changes unless the whole state is consistent.
    pub fn import(
        &self,
        state: FsState,
        contents: Vec<Arc<Plaintext>>,
        namespaces: Vec<OwnedFd>,
        other_owner: &dyn Fn(&str) -> Option<TaskOwner>,
    ) -> Result<(), ImportError> {
        let bad = |what: String| ImportError::Inconsistent(what);
        let known: HashSet<u64> = state.nodes.iter().map(|n| n.ino).collect();
        if known.len() != state.nodes.len() {
            return Err(bad("an inode is listed twice".into()));
        }
        let is_dir: HashMap<u64, bool> =
            state.nodes.iter().map(|n| (n.ino, matches!(n.body, BodyState::Dir { .. }))).collect();
        if is_dir.get(&ROOT_INO) != Some(&true) {
            return Err(bad("no root directory".into()));
        }
        let max_ino = state.nodes.iter().map(|n| n.ino).max().unwrap_or(ROOT_INO);
        if state.next_ino <= max_ino {
            return Err(bad(format!("next inode {} is not above inode {max_ino}", state.next_ino)));
        }
        let content = |i: usize| contents.get(i).cloned().ok_or_else(|| bad(format!("no content {i}")));
        let mut namespaces: Vec<Option<OwnedFd>> = namespaces.into_iter().map(Some).collect();

        let mut nodes = HashMap::with_capacity(state.nodes.len());
        for n in state.nodes {
            if is_dir.get(&n.parent) != Some(&true) {
                return Err(bad(format!("inode {} has no parent directory {}", n.ino, n.parent)));
            }
            let body = match n.body {
                BodyState::Dir { children, mtime } => {
                    if let Some((name, c)) = children.iter().find(|(_, c)| !known.contains(c)) {
                        return Err(bad(format!("entry {name:?} names a missing inode {c}")));
                    }
                    let children: BTreeMap<Arc<str>, u64> =
                        children.into_iter().map(|(k, v)| (Arc::from(k.as_str()), v)).collect();
                    Body::Dir { children, mtime: time_from(mtime) }
                }
                BodyState::File { uid, gid, mode, content: i, meta, mtime, pinned } => {
                    let content = content(i)?;
                    Body::File(FileNode {
                        uid,
                        gid,
                        mode,
                        size: content.len() as u64,
                        content,
                        meta: meta_from(&meta),
                        mtime: time_from(mtime),
                        pinned,
                    })
                }
            };
            if matches!(body, Body::File(_)) && n.task.is_none() {
                return Err(bad(format!("file inode {} belongs to no task", n.ino)));
            }
            let node = Node {
                parent: n.parent,
                task: n.task.map(|t| Arc::from(t.as_str())),
                rel: Arc::from(n.rel.as_str()),
                body,
                lookups: AtomicU64::new(n.lookups),
                retired: n.retired,
            };
            nodes.insert(n.ino, node);
        }
        let mut tasks = HashMap::with_capacity(state.tasks.len());
        for t in state.tasks {
            if is_dir.get(&t.dir) != Some(&true) {
                return Err(bad(format!("task {:?} has no directory {}", t.id, t.dir)));
            }
            if let Some(missing) = t.inodes.iter().find(|i| !known.contains(i)) {
                return Err(bad(format!("task {:?} lists a missing inode {missing}", t.id)));
            }
            let owner = match t.owner {
                OwnerState::None => None,
                OwnerState::Other => other_owner(&t.id),
                OwnerState::Namespace(i) => {
                    let fd = namespaces
                        .get_mut(i)
                        .and_then(Option::take)
                        .ok_or_else(|| bad(format!("task {:?} names a missing namespace {i}", t.id)))?;
                    Some(TaskOwner::new(MountNamespaceOwner::from_fd(fd).map_err(ImportError::Namespace)?))
                }
            };
            tasks.insert(Arc::from(t.id.as_str()), Task { dir: t.dir, owner, inodes: t.inodes });
        }
        let mut handles = HashMap::with_capacity(state.handles.len());
        for h in state.handles {
            let content = h.content.map(content).transpose()?;
            let handle = Handle {
                ino: h.ino,
                task: Arc::from(h.task.as_str()),
                path: Arc::from(h.path.as_str()),
                meta: meta_from(&h.meta),
                content,
                opener_tid: h.opener_tid,
                opener: identity_from(&h.opener),
            };
            handles.insert(h.fh, handle);
        }
        let max_fh = handles.keys().copied().max().unwrap_or(0);
        *self.write_tree() = Tree { nodes, tasks, next_ino: state.next_ino };
        *self.lock_handles() = handles;
        self.next_fh.store(state.next_fh.max(max_fh + 1), Ordering::Release);
        Ok(())
    }

    /// Every task directory and its current files (the agent rebuilds its own records of what
    /// it serves from this after an import).
    pub fn served(&self) -> Vec<ServedTask> {
        let tree = self.read_tree();
        let mut out: Vec<ServedTask> = tree
            .tasks
            .iter()
            .map(|(id, t)| {
                let files = t
                    .inodes
                    .iter()
                    .filter_map(|ino| match tree.nodes.get(ino) {
                        Some(Node { body: Body::File(f), rel, retired: false, .. }) => Some(FileSpec {
                            path: rel.to_string(),
                            uid: f.uid,
                            gid: f.gid,
                            mode: u32::from(f.mode),
                            content: f.content.clone(),
                            meta: f.meta.clone(),
                            pinned: f.pinned,
                        }),
                        _ => None,
                    })
                    .collect();
                ServedTask { id: id.to_string(), owner: t.owner.clone(), files }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::RequestInfo;
    use crate::fs::FileMeta;

    fn spec(path: &str, content: &[u8], version: u64) -> FileSpec {
        FileSpec {
            path: path.to_string(),
            uid: 0,
            gid: 0,
            mode: 0o400,
            content: Arc::new(Plaintext::new(content.to_vec())),
            meta: FileMeta { kind: FileKind::Secret, name: "db".into(), version },
            pinned: false,
        }
    }

    fn own_ns() -> TaskOwner {
        TaskOwner::new(MountNamespaceOwner::of_process(std::process::id()).expect("own namespace"))
    }

    #[test]
    fn export_then_import_keeps_inodes_handles_and_owners() {
        let fs = SecretFs::new();
        fs.add_task("web.1", Some(own_ns()), vec![spec("secrets/db", b"v1", 1)]).unwrap();
        fs.add_task("services/web", None, vec![spec("run/secrets/db", b"v1", 1)]).unwrap();
        let dir = fs.lookup(ROOT_INO, "web.1".as_ref()).unwrap().ino;
        let sub = fs.lookup(dir, "secrets".as_ref()).unwrap().ino;
        let old = fs.lookup(sub, "db".as_ref()).unwrap().ino;
        // An fd open on version 1, then a rotation: the retired inode stays (a lookup is held).
        let fh = fs.open(&RequestInfo { tid: std::process::id(), uid: 0, gid: 0 }, old, false).unwrap();
        fs.update_content("web.1", "secrets/db", Arc::new(Plaintext::new(b"v2".to_vec())), 2).unwrap();
        let new = fs.lookup(sub, "db".as_ref()).unwrap().ino;
        assert_ne!(old, new);

        let export = fs.export().unwrap();
        // Each distinct content once: v1 (task and service share nothing here: two Arcs), v2.
        assert_eq!(export.contents.len(), 3);
        assert_eq!(export.namespaces.len(), 1);
        let json = serde_json::to_string(&export.state).unwrap();
        assert!(!json.contains("v1") && !json.contains("v2"), "plaintext in the metadata: {json}");

        let next = SecretFs::new();
        let state: FsState = serde_json::from_str(&json).unwrap();
        next.import(state, export.contents, export.namespaces, &|id| {
            assert_eq!(id, "services/web");
            Some(own_ns())
        })
        .unwrap();
        assert_eq!(next.lookup(sub, "db".as_ref()).unwrap().ino, new);
        let read = next.read(&RequestInfo { tid: std::process::id(), uid: 0, gid: 0 }, fh, 0, 10).unwrap();
        assert_eq!(read.expose_secret(), b"v1", "an fd opened before keeps its version");
        assert_eq!(next.getattr(old).unwrap().size, 2);
        // The owner came along: this process (in its namespace) may open; new handles don't collide.
        let fh2 = next.open(&RequestInfo { tid: std::process::id(), uid: 0, gid: 0 }, new, false).unwrap();
        assert!(fh2 > fh);
        let served = next.served();
        assert_eq!(served.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["services/web", "web.1"]);
        assert_eq!(served[1].files[0].content.expose_secret(), b"v2");
        // Forgetting the retired inode drops it, as it would have in the predecessor.
        next.forget(old, 1);
        assert!(next.getattr(old).is_err());
    }

    #[test]
    fn inconsistent_state_is_refused_and_changes_nothing() {
        let fs = SecretFs::new();
        fs.add_task("web.1", None, vec![spec("secrets/db", b"v1", 1)]).unwrap();
        let export = fs.export().unwrap();
        let next = SecretFs::new();
        let mut broken = export.state.clone();
        if let Some(BodyState::Dir { children, .. }) =
            broken.nodes.iter_mut().find(|n| n.ino == ROOT_INO).map(|n| &mut n.body)
        {
            children.push(("ghost".into(), 999));
        }
        let err = next.import(broken, export.contents.clone(), Vec::new(), &|_| None).unwrap_err();
        assert!(err.to_string().contains("missing inode 999"), "{err}");
        let mut no_content = export.state.clone();
        no_content.handles.clear();
        let err = next.import(no_content, Vec::new(), Vec::new(), &|_| None).unwrap_err();
        assert!(err.to_string().contains("no content 0"), "{err}");
        assert!(next.task_ids().is_empty());
        next.import(export.state, export.contents, Vec::new(), &|_| None).unwrap();
        assert_eq!(next.task_ids(), ["web.1"]);
    }
}
