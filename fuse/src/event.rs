//! Access events: one per open, per read that reaches the filesystem, and per denied open. They
//! never carry content. [`EventSink`] hands them to the agent without ever blocking a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError};
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

/// A bounded queue of events that takes memory only for what it holds (a `sync_channel` of the
/// same bound allocates every slot up front: 65,536 events were 10.5 MB resident, and locked, in
/// an idle agent). Made by [`queue`].
#[derive(Debug, Clone)]
pub struct EventSender {
    tx: Sender<AccessEvent>,
    pending: Arc<AtomicUsize>,
    limit: usize,
}

/// The receiving end of [`queue`].
#[derive(Debug)]
pub struct EventReceiver {
    rx: Receiver<AccessEvent>,
    pending: Arc<AtomicUsize>,
}

impl EventReceiver {
    /// The oldest waiting event, if any; never blocks.
    pub fn try_recv(&self) -> Result<AccessEvent, TryRecvError> {
        let event = self.rx.try_recv()?;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        Ok(event)
    }

    /// Every event waiting now, oldest first.
    pub fn try_iter(&self) -> impl Iterator<Item = AccessEvent> + '_ {
        std::iter::from_fn(|| self.try_recv().ok())
    }
}

/// A queue holding at most `limit` events: beyond that, events are dropped and counted.
pub fn queue(limit: usize) -> (EventSender, EventReceiver) {
    let (tx, rx) = std::sync::mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    (EventSender { tx, pending: pending.clone(), limit }, EventReceiver { rx, pending })
}

/// Where events go: a bounded queue, never waited on.
#[derive(Debug)]
enum Queue {
    /// A `sync_channel` (its slots allocated up front).
    Channel(SyncSender<AccessEvent>),
    /// A [`queue`].
    Lazy(EventSender),
}

impl From<SyncSender<AccessEvent>> for Queue {
    fn from(tx: SyncSender<AccessEvent>) -> Self {
        Queue::Channel(tx)
    }
}

impl From<EventSender> for Queue {
    fn from(tx: EventSender) -> Self {
        Queue::Lazy(tx)
    }
}

/// Where events go: a bounded queue, never waited on. A full (or closed) queue drops the event
/// and counts it.
#[derive(Debug, Default)]
pub struct EventSink {
    sink: Option<Queue>,
    dropped: AtomicU64,
}

impl EventSink {
    /// Events go to `sink`: a `SyncSender` or an [`EventSender`].
    pub fn new(sink: impl Into<EventQueue>) -> Self {
        Self { sink: Some(sink.into().0), dropped: AtomicU64::new(0) }
    }

    /// Whether events are wanted at all.
    pub fn is_enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Send `event` if there is room.
    pub fn emit(&self, event: AccessEvent) {
        let sent = match &self.sink {
            None => return,
            Some(Queue::Channel(tx)) => tx.try_send(event).is_ok(),
            Some(Queue::Lazy(q)) => {
                // Count first, so that the bound holds however many threads send at once.
                let refused = q.pending.fetch_add(1, Ordering::AcqRel) >= q.limit || q.tx.send(event).is_err();
                if refused {
                    q.pending.fetch_sub(1, Ordering::AcqRel);
                }
                !refused
            }
        };
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events lost so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Something events can be sent to: a `SyncSender<AccessEvent>` or an [`EventSender`].
#[derive(Debug)]
pub struct EventQueue(Queue);

impl From<SyncSender<AccessEvent>> for EventQueue {
    fn from(tx: SyncSender<AccessEvent>) -> Self {
        EventQueue(tx.into())
    }
}

impl From<EventSender> for EventQueue {
    fn from(tx: EventSender) -> Self {
        EventQueue(tx.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::Identity;

    fn event() -> AccessEvent {
        let who = Identity { pid: 1, uid: 0, gid: 0, command: Arc::from("cat"), tags: None };
        AccessEvent::new(who, Arc::from("t"), Arc::from("s"), None, AccessOp::Open, 0)
    }

    #[test]
    fn the_lazy_queue_is_bounded_and_counts_what_it_drops() {
        let (tx, rx) = queue(3);
        let sink = EventSink::new(tx);
        for _ in 0..5 {
            sink.emit(event());
        }
        assert_eq!(sink.dropped(), 2);
        assert_eq!(rx.try_iter().count(), 3);
        // Room again once received.
        sink.emit(event());
        assert_eq!(sink.dropped(), 2);
        assert!(rx.try_recv().is_ok());
        drop(rx);
        sink.emit(event());
        assert_eq!(sink.dropped(), 3, "a closed queue drops too");
    }
}
