//! Access events: one per open, per read that reaches the filesystem, and per denied open. They
//! never carry content. [`EventSink`] hands them to the agent without ever blocking a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::SystemTime;

use crate::fs::FileMeta;
use crate::owner::{Identity, Tags};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessOp {
    /// A file was opened for reading.
    Open,
    /// Bytes were read from an open file (`bytes` says how many).
    Read,
    /// An open (of a file, or of a task directory) was refused.
    Denied(DenyReason),
}

/// Why an open was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The task has no owner yet: nobody may read its files.
    NoOwner,
    /// The caller is not the task's owner (for a mount-namespace owner: not in its namespace).
    NotOwner,
    /// The open asked for write access.
    WriteAccess,
    /// The calling process could not be identified (it exited, or `/proc` failed).
    UnknownCaller,
    /// Refused by an owner check for a reason of its own (a short `CamelCase` word, e.g.
    /// `WrongService`), recorded as is.
    Refused(&'static str),
}

impl DenyReason {
    /// The reason as recorded in the audit trail (`NotOwner`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DenyReason::NoOwner => "NoOwner",
            DenyReason::NotOwner => "NotOwner",
            DenyReason::WriteAccess => "WriteAccess",
            DenyReason::UnknownCaller => "UnknownCaller",
            DenyReason::Refused(reason) => reason,
        }
    }
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
    /// Uid of the caller (the kernel's fs uid, unless the owner check mapped it).
    pub uid: u32,
    /// Gid of the caller.
    pub gid: u32,
    /// The process's command name (`/proc/<pid>/comm`); chosen by the process, so a hint only.
    pub command: Arc<str>,
    /// Owner-specific facts about the caller, from the owner check.
    pub tags: Tags,
    /// Bytes returned, for `Read`; 0 otherwise.
    pub bytes: u64,
}

impl AccessEvent {
    /// An event now, by `who`.
    pub fn new(
        who: Identity,
        task_id: Arc<str>,
        path: Arc<str>,
        meta: Option<FileMeta>,
        op: AccessOp,
        bytes: u64,
    ) -> Self {
        let Identity { pid, uid, gid, command, tags } = who;
        AccessEvent { time: SystemTime::now(), task_id, path, meta, op, pid, uid, gid, command, tags, bytes }
    }
}

/// Where events go: a bounded channel, never waited on. A full (or closed) channel drops the
/// event and counts it.
#[derive(Debug, Default)]
pub struct EventSink {
    sink: Option<SyncSender<AccessEvent>>,
    dropped: AtomicU64,
}

impl EventSink {
    /// Events go to `sink`.
    pub fn new(sink: SyncSender<AccessEvent>) -> Self {
        Self { sink: Some(sink), dropped: AtomicU64::new(0) }
    }

    /// Whether events are wanted at all.
    pub fn is_enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Send `event` if there is room.
    pub fn emit(&self, event: AccessEvent) {
        let Some(sink) = &self.sink else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sink.try_send(event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events lost so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
