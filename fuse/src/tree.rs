//! The inode table: tasks, their directories and files, looked up by inode number or path.
//! Inode numbers are never reused while the filesystem lives. No locking here: [`crate::SecretFs`]
//! holds the table behind one `RwLock`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::fs::{Attr, FileMeta, FileSpec, Invalidation, NodeKind, TaskError};
use crate::owner::TaskOwner;
use crate::secret::Plaintext;

/// Longest task id or path component (the kernel's `NAME_MAX`).
const NAME_MAX: usize = 255;

pub(crate) struct FileNode {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mode: u16,
    /// The content (open handles hold their own reference).
    pub(crate) content: Arc<Plaintext>,
    /// Content length.
    pub(crate) size: u64,
    pub(crate) meta: FileMeta,
    pub(crate) mtime: SystemTime,
    /// Bound on its own somewhere (see [`FileSpec::pinned`]): changes happen in this inode.
    pub(crate) pinned: bool,
}

impl FileNode {
    fn new(spec: FileSpec, now: SystemTime) -> Self {
        FileNode {
            uid: spec.uid,
            gid: spec.gid,
            mode: spec.mode as u16,
            size: spec.content.len() as u64,
            content: spec.content,
            meta: spec.meta,
            mtime: now,
            pinned: spec.pinned,
        }
    }

    /// Whether `spec` describes exactly this file (same version, owner, mode and kind of bind).
    pub(crate) fn is(&self, spec: &FileSpec) -> bool {
        (self.uid, self.gid, self.mode, &self.meta, self.pinned)
            == (spec.uid, spec.gid, spec.mode as u16, &spec.meta, spec.pinned)
    }
}

pub(crate) enum Body {
    Dir { children: BTreeMap<Arc<str>, u64>, mtime: SystemTime },
    File(FileNode),
}

pub(crate) struct Node {
    pub(crate) parent: u64,
    /// Owning task; `None` only for the root.
    pub(crate) task: Option<Arc<str>>,
    /// Path relative to the task directory, for events.
    pub(crate) rel: Arc<str>,
    pub(crate) body: Body,
    /// Lookups the kernel holds on this inode (each entry reply adds one, `forget` takes them).
    pub(crate) lookups: AtomicU64,
    /// Replaced by a newer version of the file: no longer in its directory, kept only until the
    /// kernel forgets it (old descriptors `fstat` it; an open that found it by a path walk begun
    /// before the rotation, or through `/proc/PID/fd`, gets this version).
    pub(crate) retired: bool,
}

pub(crate) struct Task {
    pub(crate) dir: u64,
    pub(crate) owner: Option<TaskOwner>,
    /// Every inode of the task, its directory included.
    pub(crate) inodes: Vec<u64>,
}

pub(crate) struct Tree {
    pub(crate) nodes: HashMap<u64, Node>,
    pub(crate) tasks: HashMap<Arc<str>, Task>,
    pub(crate) next_ino: u64,
}

impl Tree {
    pub(crate) fn alloc(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// Replace file `ino` by a new inode holding `spec` (one inode per content version): the
    /// old one leaves its directory and is retired. Returns the new inode and the directory
    /// entry the kernel must forget.
    pub(crate) fn new_version(&mut self, ino: u64, spec: FileSpec, now: SystemTime) -> (u64, Invalidation) {
        let (parent, task, rel) = {
            let old = &self.nodes[&ino];
            (old.parent, old.task.clone().expect("files belong to a task"), old.rel.clone())
        };
        let name: Arc<str> = Arc::from(rel.rsplit('/').next().expect("paths are not empty"));
        let new = self.alloc();
        let node = Node {
            parent,
            task: Some(task.clone()),
            rel,
            body: Body::File(FileNode::new(spec, now)),
            lookups: AtomicU64::new(0),
            retired: false,
        };
        self.nodes.insert(new, node);
        self.children_mut(parent).insert(name.clone(), new);
        if let Some(t) = self.tasks.get_mut(&task) {
            t.inodes.push(new);
        }
        self.retire(ino);
        (new, Invalidation::Entry { parent, name })
    }

    /// Take a replaced file out of service; drop it now if the kernel holds no lookup of it.
    fn retire(&mut self, ino: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else { return };
        node.retired = true;
        if node.lookups.load(Ordering::Acquire) == 0 {
            self.drop_node(ino);
        }
    }

    /// The kernel forgot `n` lookups of `ino`; a retired node it no longer knows goes.
    pub(crate) fn forget(&mut self, ino: u64, n: u64) {
        let Some(node) = self.nodes.get(&ino) else { return };
        let left = node.lookups.load(Ordering::Acquire).saturating_sub(n);
        node.lookups.store(left, Ordering::Release);
        if left == 0 && node.retired {
            self.drop_node(ino);
        }
    }

    fn drop_node(&mut self, ino: u64) {
        if let Some(Node { task: Some(task), .. }) = self.nodes.remove(&ino)
            && let Some(t) = self.tasks.get_mut(&task)
        {
            t.inodes.retain(|&i| i != ino);
        }
    }

    pub(crate) fn children_mut(&mut self, dir: u64) -> &mut BTreeMap<Arc<str>, u64> {
        match self.nodes.get_mut(&dir).map(|n| &mut n.body) {
            Some(Body::Dir { children, .. }) => children,
            _ => unreachable!("inode {dir} is a directory we created"),
        }
    }
}

/// Adds one file under a task's directory, creating intermediate directories; records every
/// new inode in `inodes`.
pub(crate) fn insert_file(
    tree: &mut Tree,
    dir: u64,
    task: &Arc<str>,
    spec: FileSpec,
    now: SystemTime,
    inodes: &mut Vec<u64>,
) {
    let rel: Arc<str> = Arc::from(spec.path.as_str());
    let components: Vec<&str> = rel.split('/').collect();
    let (file_name, dirs) = components.split_last().expect("paths are not empty");
    let mut parent = dir;
    for (depth, name) in dirs.iter().enumerate() {
        let existing = tree.children_mut(parent).get(*name).copied();
        parent = match existing {
            Some(ino) => ino,
            None => {
                let ino = tree.alloc();
                let rel = components[..=depth].join("/");
                tree.nodes.insert(ino, new_dir(parent, task, &rel, now));
                tree.children_mut(parent).insert(Arc::from(*name), ino);
                inodes.push(ino);
                ino
            }
        };
    }
    let ino = tree.alloc();
    let body = Body::File(FileNode::new(spec, now));
    let node =
        Node { parent, task: Some(task.clone()), rel: rel.clone(), body, lookups: AtomicU64::new(0), retired: false };
    tree.nodes.insert(ino, node);
    tree.children_mut(parent).insert(Arc::from(*file_name), ino);
    inodes.push(ino);
}

pub(crate) fn new_dir(parent: u64, task: &Arc<str>, rel: &str, now: SystemTime) -> Node {
    Node {
        parent,
        task: Some(task.clone()),
        rel: Arc::from(rel),
        body: Body::Dir { children: BTreeMap::new(), mtime: now },
        lookups: AtomicU64::new(0),
        retired: false,
    }
}

pub(crate) fn attr_of(tree: &Tree, ino: u64) -> Attr {
    let node = &tree.nodes[&ino];
    match &node.body {
        Body::Dir { children, mtime } => {
            let subdirs = children
                .values()
                .filter(|c| matches!(tree.nodes.get(c).map(|n| &n.body), Some(Body::Dir { .. })))
                .count();
            Attr {
                ino,
                kind: NodeKind::Directory,
                size: 0,
                perm: 0o555,
                nlink: 2 + subdirs as u32,
                uid: 0,
                gid: 0,
                mtime: *mtime,
            }
        }
        Body::File(f) => Attr {
            ino,
            kind: NodeKind::File,
            size: f.size,
            perm: f.mode,
            nlink: 1,
            uid: f.uid,
            gid: f.gid,
            mtime: f.mtime,
        },
    }
}

pub(crate) fn find_file(tree: &Tree, task_id: &str, path: &str) -> Result<u64, TaskError> {
    let no_file = || TaskError::NoSuchFile { task_id: task_id.to_string(), path: path.to_string() };
    let task = tree.tasks.get(task_id).ok_or_else(|| TaskError::NoSuchTask(task_id.to_string()))?;
    let mut ino = task.dir;
    for name in path.split('/') {
        ino = match tree.nodes.get(&ino).map(|n| &n.body) {
            Some(Body::Dir { children, .. }) => *children.get(name).ok_or_else(no_file)?,
            _ => return Err(no_file()),
        };
    }
    match tree.nodes.get(&ino).map(|n| &n.body) {
        Some(Body::File(_)) => Ok(ino),
        _ => Err(no_file()),
    }
}

pub(crate) fn validate_task_id(id: &str) -> Result<(), TaskError> {
    let component = |c: &str, allowed: fn(u8) -> bool| {
        !c.is_empty() && c.len() <= NAME_MAX && c != "." && c != ".." && c.bytes().all(allowed)
    };
    let lower = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b);
    let ok = match id.split_once('/') {
        None => component(id, lower),
        // A task in a group directory (`services/NAME`): the name may also hold capitals.
        Some((group, name)) => {
            component(group, lower) && component(name, |b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        }
    };
    if ok { Ok(()) } else { Err(TaskError::InvalidTaskId(id.to_string())) }
}

/// The directory holding task `id`'s directory (the root, or its group directory, made on first
/// use and open to all as the root is), and the name of the task's directory in it.
pub(crate) fn task_parent<'a>(tree: &mut Tree, id: &'a str, root: u64, now: SystemTime) -> (u64, &'a str) {
    let Some((group, name)) = id.split_once('/') else { return (root, id) };
    if let Some(&ino) = tree.children_mut(root).get(group) {
        return (ino, name);
    }
    let ino = tree.alloc();
    let node = Node {
        parent: root,
        task: None,
        rel: Arc::from(""),
        body: Body::Dir { children: BTreeMap::new(), mtime: now },
        lookups: AtomicU64::new(0),
        retired: false,
    };
    tree.nodes.insert(ino, node);
    tree.children_mut(root).insert(Arc::from(group), ino);
    (ino, name)
}

/// Checks every path and mode, and that no two files collide.
pub(crate) fn validate_files(files: &[FileSpec]) -> Result<(), TaskError> {
    let invalid = |path: &str, reason| TaskError::InvalidPath { path: path.to_string(), reason };
    let mut file_paths = HashSet::new();
    let mut dir_paths = HashSet::new();
    for spec in files {
        let path = spec.path.as_str();
        if spec.mode & !0o777 != 0 {
            return Err(TaskError::InvalidMode { path: path.to_string(), mode: spec.mode });
        }
        let components = split_path(path).map_err(|reason| invalid(path, reason))?;
        if !file_paths.insert(path) {
            return Err(invalid(path, "duplicate path"));
        }
        for i in 1..components.len() {
            let end: usize = components[..i].iter().map(|c| c.len() + 1).sum::<usize>() - 1;
            dir_paths.insert(&path[..end]);
        }
    }
    if let Some(clash) = file_paths.intersection(&dir_paths).next() {
        return Err(invalid(clash, "is both a file and a directory"));
    }
    Ok(())
}

pub(crate) fn split_path(path: &str) -> Result<Vec<&str>, &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.starts_with('/') {
        return Err("absolute path");
    }
    let components: Vec<&str> = path.split('/').collect();
    for c in &components {
        match *c {
            "" => return Err("empty component"),
            "." | ".." => return Err("`.` or `..` component"),
            c if c.contains('\0') => return Err("NUL byte"),
            c if c.len() > NAME_MAX => return Err("component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(components)
}
