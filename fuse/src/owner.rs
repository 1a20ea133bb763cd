//! Who may open a task directory's files: the [`OwnerCheck`] interface the filesystem calls on
//! every open, the [`Caller`] it is given and the [`Decision`] it answers.
//!
//! The filesystem records one [`TaskOwner`] per task directory and knows nothing of what kind of
//! owner it is. [`crate::MountNamespaceOwner`] (a `hush run` task: processes in one mount
//! namespace) is the implementation in this crate; the agent may bring others (a container,
//! identified by the caller's cgroup) without this crate knowing of them.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::event::DenyReason;

/// Facts about the caller kept in access events beyond pid, uid, gid and command: owner-specific
/// (e.g. `("container", "3f2a...")`), chosen by the [`OwnerCheck`]. Shared, so an event clones a
/// pointer; `None` when there are none.
pub type Tags = Option<Arc<[(&'static str, Arc<str>)]>>;

/// What a caller thread's kernel state says during its request (its namespaces). Implemented by
/// the `/proc` resolver; tests bring their own.
pub trait ThreadProbe: Send + Sync {
    /// Inode number of the thread's mount namespace, read during the current request: a thread
    /// can `setns` or `unshare` at any time, but not while it is blocked in its request, and no
    /// other thread can change its namespaces. Never a value from an earlier request. Must fail
    /// rather than guess when the thread cannot be read.
    fn mount_namespace(&self) -> io::Result<u64>;
}

/// The caller of one request: the kernel's view (thread, uid, gid) and the process behind it.
#[derive(Clone)]
pub struct Caller {
    /// Calling thread id, in the agent's PID namespace.
    pub tid: u32,
    /// Its process (thread group id).
    pub pid: u32,
    /// Filesystem uid as the kernel reports it (the host's view).
    pub uid: u32,
    /// Filesystem gid as the kernel reports it.
    pub gid: u32,
    /// The process's command name (`/proc/<pid>/comm`): chosen by the process, a hint only.
    pub command: Arc<str>,
    /// Fresh reads of the thread's kernel state.
    pub probe: Arc<dyn ThreadProbe>,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("tid", &self.tid)
            .field("pid", &self.pid)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// The thread's mount namespace inode now (see [`ThreadProbe::mount_namespace`]).
    pub fn mount_namespace(&self) -> io::Result<u64> {
        self.probe.mount_namespace()
    }

    /// The caller as an access event names it, with no tags.
    pub fn identity(&self) -> Identity {
        Identity { pid: self.pid, uid: self.uid, gid: self.gid, command: self.command.clone(), tags: None }
    }
}

/// Who did an access, as recorded in its event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Process id (thread group id, host view); the thread id if the process is unknown.
    pub pid: u32,
    /// Uid to record: the kernel's, or one the owner check maps (e.g. inside a user namespace).
    pub uid: u32,
    /// Gid to record.
    pub gid: u32,
    /// Command name (a hint chosen by the process).
    pub command: Arc<str>,
    /// Owner-specific facts (see [`Tags`]).
    pub tags: Tags,
}

/// The answer of an [`OwnerCheck`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `Ok` to let the open proceed, the reason for the refusal otherwise.
    pub verdict: Result<(), DenyReason>,
    /// Who the caller is, for the event recorded either way.
    pub identity: Identity,
}

impl Decision {
    /// Allow, recording `identity`.
    pub fn allow(identity: Identity) -> Self {
        Self { verdict: Ok(()), identity }
    }

    /// Refuse for `reason`, recording `identity`.
    pub fn deny(reason: DenyReason, identity: Identity) -> Self {
        Self { verdict: Err(reason), identity }
    }
}

/// Decides, on every open of a file (and of a directory) below a task directory, whether the
/// caller is that directory's owner.
///
/// # Security
/// Called on the filesystem's request threads with no lock of ours held, once per open: it must
/// never guess (refuse when the caller cannot be identified), never block on anything slow or
/// remote (an answer from a cache is fine if the cache cannot be fooled), and must not be
/// fooled by identifiers the kernel reuses (thread ids, namespace inode numbers, cgroup paths)
/// unless it holds what keeps them from being reused.
pub trait OwnerCheck: Send + Sync + 'static {
    /// Whether `caller` may open files of the directory this owner was recorded for.
    fn check(&self, caller: &Caller) -> Decision;

    /// A short description for logs and `Debug` (never a secret).
    fn describe(&self) -> String;

    /// The mount namespace this owner is, if it is one: a hand-over passes its descriptor on
    /// (other owners are made again by the successor, see [`crate::handover`]).
    fn as_namespace(&self) -> Option<&crate::MountNamespaceOwner> {
        None
    }
}

/// The owner recorded for a task directory. Cheap to clone (shared).
#[derive(Clone)]
pub struct TaskOwner(Arc<dyn OwnerCheck>);

impl TaskOwner {
    /// An owner decided by `check`.
    pub fn new(check: impl OwnerCheck) -> Self {
        Self(Arc::new(check))
    }

    /// An owner from a shared check.
    pub fn from_arc(check: Arc<dyn OwnerCheck>) -> Self {
        Self(check)
    }

    /// Ask the owner about `caller`.
    pub fn check(&self, caller: &Caller) -> Decision {
        self.0.check(caller)
    }

    /// The mount namespace this owner is, if it is one.
    pub fn as_namespace(&self) -> Option<&crate::MountNamespaceOwner> {
        self.0.as_namespace()
    }

    /// Whether two owners are the same recorded owner (not merely equal-looking).
    pub fn same(&self, other: &TaskOwner) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for TaskOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskOwner({})", self.0.describe())
    }
}
