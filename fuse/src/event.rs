//! Access events: one per open, per read that returns data, and per denied open. They never
//! carry content.

use std::sync::Arc;
use std::time::SystemTime;

use crate::fs::FileMeta;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessOp {
    /// A file was opened for reading.
    Open,
    /// Bytes were read from an open file (`bytes` says how many).
    Read,
    /// An open (of a file, or of a task directory) was refused.
    Denied(DenyReason),
}

/// Why an open was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The task has no owner yet: nobody may read its files.
    NoOwner,
    /// The caller is not in the task's mount namespace.
    NotOwner,
    /// The open asked for write access.
    WriteAccess,
    /// The calling process could not be identified (it exited, or `/proc` failed).
    UnknownCaller,
}

/// One audited access. `Debug` is safe to log: there is no content in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEvent {
    /// When the request was served.
    pub time: SystemTime,
    /// The task whose file (or directory) was accessed.
    pub task_id: Arc<str>,
    /// Path relative to the task directory (`""` for the task directory itself).
    pub path: Arc<str>,
    /// What the file is; `None` for directories.
    pub meta: Option<FileMeta>,
    /// Open, Read or Denied.
    pub op: AccessOp,
    /// The calling process (thread group id); the thread id if the process could not be found.
    pub pid: u32,
    /// Effective (fs) uid of the caller, as the kernel reports it.
    pub uid: u32,
    /// Effective (fs) gid of the caller.
    pub gid: u32,
    /// The process's command name (`/proc/<pid>/comm`); chosen by the process, so a hint only.
    pub command: String,
    /// Bytes returned, for `Read`; 0 otherwise.
    pub bytes: u64,
}
