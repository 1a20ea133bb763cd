//! Ships the FUSE filesystem's access events to the vault, in order, surviving outages.
//!
//! Identical accesses (same task, process, identity, file, version and operation; for a denial
//! the same reason) within one [`WINDOW`] fold into one entry with a `count`, the time of the
//! first (`time`) and of the last (`last_time`), and the bytes summed: a task reading its
//! secret in a loop, or a local user opening a task's file in a loop, writes one entry per
//! window, not one per access. Nothing else is ever merged, and counts are exact.
//! Folded entries wait in a bounded in-memory queue until the vault acknowledges them. When the
//! queue (or the filesystem's own event channel) overflows, the loss is counted and reported as
//! a `dropped` entry: never silent.
//!
//! A hand-over to a successor agent ([`crate::handover`]) takes what waits ([`Pending::take`]):
//! the successor ships it, so an access just before a restart is recorded once, with its count.

use crate::reconcile::Reconciler;
use crate::vault_link::NodeChannel;
use hush_fuse::{AccessEvent, AccessOp, FileKind, SecretFs};
use hush_proto::v1 as pb;
use hush_proto::v1::node_client::NodeClient;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Events held while the vault is unreachable (`HUSH_AUDIT_QUEUE` overrides, for tests).
const DEFAULT_QUEUE: usize = 100_000;

fn max_queue() -> usize {
    std::env::var("HUSH_AUDIT_QUEUE").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_QUEUE)
}
const MAX_BATCH: usize = 2_000;
/// How long identical accesses fold into one entry (from the first of them).
pub const WINDOW: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(20);
const RETRY: Duration = Duration::from_millis(500);

/// Whether opens and reads are recorded (`hush-agent --no-open-audit` turns them off; the vault
/// is told on every assignment stream and records it).
static OPEN_EVENTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Records no opens or reads from now on (only before the filesystem is built: it reads this).
pub fn disable_open_events() {
    OPEN_EVENTS.store(false, std::sync::atomic::Ordering::SeqCst);
}

/// See [`disable_open_events`].
pub fn open_events() -> bool {
    OPEN_EVENTS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Where `--audit-log` writes: a file or standard output.
pub type LocalLog = Box<dyn Write + Send>;

/// What a hand-over asks of the shipper.
enum PendingRequest {
    /// Everything not yet delivered, folded and queued (the mount is frozen: nothing new comes).
    Take(std::sync::mpsc::SyncSender<Vec<pb::AccessEvent>>),
    /// The hand-over did not happen: back at the front of the queue.
    Restore(Vec<pb::AccessEvent>),
    /// An entry of the agent's own (`agent_restart`), queued as it is.
    Record(Box<pb::AccessEvent>),
}

/// The hand-over's handle on the shipper's undelivered events.
#[derive(Clone)]
pub struct Pending(tokio::sync::mpsc::UnboundedSender<PendingRequest>);

/// The shipper's end of [`Pending`].
pub struct PendingRequests(tokio::sync::mpsc::UnboundedReceiver<PendingRequest>);

impl Pending {
    pub fn channel() -> (Pending, PendingRequests) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Pending(tx), PendingRequests(rx))
    }

    /// Takes every event the shipper has not delivered (from a blocking thread); `None` if it
    /// does not answer within `timeout` (it is waiting on the vault: those events stay behind).
    pub fn take(&self, timeout: Duration) -> Option<Vec<pb::AccessEvent>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.0.send(PendingRequest::Take(tx)).ok()?;
        rx.recv_timeout(timeout).ok()
    }

    /// Queues an `agent_restart` entry: how this agent started (`reason`). The vault records it
    /// for this node, at its own time.
    pub fn record_restart(&self, reason: String) {
        let event = pb::AccessEvent {
            time: rfc3339(SystemTime::now()),
            op: "agent_restart".into(),
            reason,
            count: 1,
            ..Default::default()
        };
        let _ = self.0.send(PendingRequest::Record(Box::new(event)));
    }

    /// Gives back what [`Pending::take`] took.
    pub fn restore(&self, events: Vec<pb::AccessEvent>) {
        if !events.is_empty() {
            let _ = self.0.send(PendingRequest::Restore(events));
        }
    }
}

pub struct Shipper {
    pub events: hush_fuse::EventReceiver,
    /// Hand-over requests.
    pub pending: PendingRequests,
    /// Events a predecessor had not delivered, shipped first.
    pub carried: Vec<pb::AccessEvent>,
    pub fs: Arc<SecretFs>,
    pub reconciler: Arc<Reconciler>,
    pub vault: NodeClient<NodeChannel>,
    pub local_log: Option<LocalLog>,
    pub node_id: String,
}

fn rfc3339(time: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// One tag the owner check attached to an event (container tasks: `task`, `container`, ...).
fn tag(event: &AccessEvent, key: &str) -> String {
    event
        .tags
        .iter()
        .flat_map(|tags| tags.iter())
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .unwrap_or_default()
}

/// The task and service an event belongs to: a `hush run` task's directory is its task; a
/// service directory (`services/NAME`) is its service, and the task is the container's.
fn task_and_service(event: &AccessEvent, reconciler: &Reconciler) -> (String, String) {
    match event.task_id.strip_prefix("services/") {
        Some(service) => (tag(event, "task"), service.to_string()),
        None => (event.task_id.to_string(), reconciler.service_of(&event.task_id).unwrap_or_default()),
    }
}

fn to_wire(event: AccessEvent, task_id: String, service: String) -> pb::AccessEvent {
    let (op, reason) = match event.op {
        AccessOp::Open => ("open", String::new()),
        AccessOp::Read => ("read", String::new()),
        AccessOp::Denied(reason) => ("denied", reason.name().to_string()),
    };
    let (kind, name, version) = match &event.meta {
        Some(meta) => {
            let kind = match meta.kind {
                FileKind::Secret => pb::Kind::Secret,
                FileKind::Config => pb::Kind::Config,
            };
            (kind as i32, meta.name.to_string(), meta.version)
        }
        None => (0, String::new(), 0),
    };
    pb::AccessEvent {
        time: rfc3339(event.time),
        op: op.to_string(),
        container: tag(&event, "container"),
        container_name: tag(&event, "container_name"),
        image: tag(&event, "image"),
        task_id,
        service,
        kind,
        name,
        version,
        pid: event.pid,
        uid: event.uid,
        gid: event.gid,
        command: event.command.to_string(),
        bytes: event.bytes,
        count: 1,
        last_time: String::new(),
        reason,
        path: format!("/{}", event.path.trim_start_matches("root/")),
    }
}

/// What must be equal for two accesses to fold: everything recorded but the times, the bytes
/// and the count.
#[derive(Clone, PartialEq, Eq, Hash)]
struct FoldKey {
    task_id: Arc<str>,
    path: Arc<str>,
    file: Option<(bool, Arc<str>, u64)>,
    op: AccessOp,
    pid: u32,
    uid: u32,
    gid: u32,
    command: Arc<str>,
    tags: hush_fuse::Tags,
}

impl FoldKey {
    fn of(event: &AccessEvent) -> Self {
        FoldKey {
            task_id: event.task_id.clone(),
            path: event.path.clone(),
            file: event.meta.as_ref().map(|m| (m.kind == FileKind::Secret, m.name.clone(), m.version)),
            op: event.op,
            pid: event.pid,
            uid: event.uid,
            gid: event.gid,
            command: event.command.clone(),
            tags: event.tags.clone(),
        }
    }
}

/// One folded entry: the first access, and what the others added.
struct Folded {
    first: AccessEvent,
    last: SystemTime,
    count: u64,
    bytes: u64,
}

/// Accesses of the current window, folded, in the order of their first occurrence.
#[derive(Default)]
pub struct Folder {
    entries: Vec<Folded>,
    index: HashMap<FoldKey, usize>,
    opened: Option<tokio::time::Instant>,
}

impl Folder {
    /// Adds one access (returns whether it folded into an earlier one).
    pub fn add(&mut self, event: AccessEvent, now: tokio::time::Instant) -> bool {
        let key = FoldKey::of(&event);
        if let Some(&i) = self.index.get(&key) {
            let entry = &mut self.entries[i];
            entry.count += 1;
            entry.bytes += event.bytes;
            entry.last = entry.last.max(event.time);
            return true;
        }
        self.opened.get_or_insert(now);
        self.index.insert(key, self.entries.len());
        let (last, bytes) = (event.time, event.bytes);
        self.entries.push(Folded { first: event, last, count: 1, bytes });
        false
    }

    /// Distinct entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the window that began with the oldest waiting entry is over.
    pub fn is_due(&self, now: tokio::time::Instant) -> bool {
        self.opened.is_some_and(|opened| now.duration_since(opened) >= WINDOW)
    }

    /// The folded entries, oldest first; starts a new window.
    fn take(&mut self, task_and_service: impl Fn(&AccessEvent) -> (String, String)) -> Vec<pb::AccessEvent> {
        self.index.clear();
        self.opened = None;
        std::mem::take(&mut self.entries)
            .into_iter()
            .map(|f| {
                let (task_id, service) = task_and_service(&f.first);
                let mut wire = to_wire(f.first, task_id, service);
                wire.count = f.count;
                wire.bytes = f.bytes;
                if f.count > 1 {
                    wire.last_time = rfc3339(f.last);
                }
                wire
            })
            .collect()
    }
}

fn dropped(count: u64) -> pb::AccessEvent {
    pb::AccessEvent { time: rfc3339(std::time::SystemTime::now()), op: "dropped".into(), count, ..Default::default() }
}

impl Shipper {
    /// Runs until `stop` fires; then makes one last attempt to deliver what is queued.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let capacity = max_queue();
        let mut queue: VecDeque<pb::AccessEvent> = std::mem::take(&mut self.carried).into();
        let mut folder = Folder::default();
        let mut lost = 0u64;
        let mut fs_dropped_seen = 0u64;
        let mut next_try = tokio::time::Instant::now();
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(TICK) => false,
                _ = stop.changed() => true,
                Some(request) = self.pending.0.recv() => {
                    match request {
                        PendingRequest::Take(reply) => {
                            while let Ok(event) = self.events.try_recv() {
                                folder.add(event, tokio::time::Instant::now());
                            }
                            self.flush(&mut folder, &mut queue, &mut lost, capacity);
                            let fs_dropped = self.fs.dropped_events();
                            lost += fs_dropped - fs_dropped_seen;
                            fs_dropped_seen = fs_dropped;
                            if lost > 0 {
                                queue.push_back(dropped(lost));
                                lost = 0;
                            }
                            let _ = reply.send(queue.drain(..).collect());
                        }
                        PendingRequest::Restore(events) => {
                            for event in events.into_iter().rev() {
                                queue.push_front(event);
                            }
                        }
                        PendingRequest::Record(event) => queue.push_back(*event),
                    }
                    continue;
                }
            };
            let now = tokio::time::Instant::now();
            while let Ok(event) = self.events.try_recv() {
                folder.add(event, now);
                // A window with as many distinct entries as the queue holds is closed early.
                if folder.len() >= capacity {
                    self.flush(&mut folder, &mut queue, &mut lost, capacity);
                }
            }
            if stopping || folder.is_due(now) {
                self.flush(&mut folder, &mut queue, &mut lost, capacity);
            }
            let fs_dropped = self.fs.dropped_events();
            lost += fs_dropped - fs_dropped_seen;
            fs_dropped_seen = fs_dropped;
            if lost > 0 {
                tracing::warn!(lost, "audit events dropped: queue full");
                // One marker per run of losses: it may exceed the capacity by this one entry.
                match queue.back_mut() {
                    Some(last) if last.op == "dropped" => last.count += lost,
                    _ => queue.push_back(dropped(lost)),
                }
                lost = 0;
            }
            if !queue.is_empty() && (stopping || tokio::time::Instant::now() >= next_try) {
                if self.send(&mut queue).await {
                    next_try = tokio::time::Instant::now();
                } else {
                    next_try = tokio::time::Instant::now() + RETRY;
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Moves the window's folded entries into the queue (and the local log); what does not fit
    /// is counted as lost, by the number of accesses it stood for.
    fn flush(&mut self, folder: &mut Folder, queue: &mut VecDeque<pb::AccessEvent>, lost: &mut u64, capacity: usize) {
        if folder.is_empty() {
            return;
        }
        let reconciler = self.reconciler.clone();
        for wire in folder.take(|event| task_and_service(event, &reconciler)) {
            if let Some(log) = self.local_log.as_mut() {
                let line = serde_json::json!({
                    "time": wire.time, "op": wire.op, "node": self.node_id, "task": wire.task_id, "service": wire.service,
                    "name": wire.name, "version": wire.version, "path": wire.path, "pid": wire.pid, "uid": wire.uid,
                    "gid": wire.gid, "command": wire.command, "bytes": wire.bytes, "reason": wire.reason,
                    "count": wire.count, "last_time": wire.last_time,
                });
                let _ = writeln!(log, "{line}");
            }
            if queue.len() >= capacity {
                *lost += wire.count;
            } else {
                queue.push_back(wire);
            }
        }
        if let Some(log) = self.local_log.as_mut() {
            let _ = log.flush();
        }
    }

    /// Sends the oldest events; removes them only once the vault has them.
    async fn send(&mut self, queue: &mut VecDeque<pb::AccessEvent>) -> bool {
        while !queue.is_empty() {
            let batch: Vec<_> = queue.iter().take(MAX_BATCH).cloned().collect();
            let count = batch.len();
            match self.vault.report_access(pb::AccessReport { events: batch }).await {
                Ok(_) => {
                    queue.drain(..count);
                }
                Err(status) => {
                    tracing::debug!(error = %status.message(), queued = queue.len(), "audit events wait for the vault");
                    return false;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hush_fuse::{DenyReason, FileMeta};

    fn access(op: AccessOp, pid: u32, path: &str, version: u64, bytes: u64) -> AccessEvent {
        AccessEvent {
            time: SystemTime::now(),
            task_id: Arc::from("t"),
            path: Arc::from(path),
            meta: Some(FileMeta { kind: FileKind::Secret, name: path.rsplit('/').next().unwrap().into(), version }),
            op,
            pid,
            uid: 0,
            gid: 0,
            command: Arc::from("cat"),
            tags: None,
            bytes,
        }
    }

    #[test]
    fn identical_accesses_fold_with_exact_counts_and_nothing_else_merges() {
        let mut folder = Folder::default();
        let start = tokio::time::Instant::now();
        for _ in 0..10_000 {
            folder.add(access(AccessOp::Open, 1, "run/secrets/a", 1, 0), start);
            folder.add(access(AccessOp::Read, 1, "run/secrets/a", 1, 7), start);
        }
        // Each differs from the first in one recorded field: none may fold into it.
        let denied = AccessOp::Denied(DenyReason::NotOwner);
        let others = [
            access(AccessOp::Open, 2, "run/secrets/a", 1, 0),
            access(AccessOp::Open, 1, "run/secrets/b", 1, 0),
            access(AccessOp::Open, 1, "run/secrets/a", 2, 0),
            access(denied, 1, "run/secrets/a", 1, 0),
            access(AccessOp::Denied(DenyReason::UnknownCaller), 1, "run/secrets/a", 1, 0),
            AccessEvent { uid: 5, ..access(AccessOp::Open, 1, "run/secrets/a", 1, 0) },
            AccessEvent { command: Arc::from("sh"), ..access(AccessOp::Open, 1, "run/secrets/a", 1, 0) },
            AccessEvent { task_id: Arc::from("u"), ..access(AccessOp::Open, 1, "run/secrets/a", 1, 0) },
        ];
        for other in others.iter().cloned() {
            assert!(!folder.add(other, start));
        }
        for _ in 0..3 {
            folder.add(access(denied, 9, "run/secrets/a", 1, 0), start);
        }
        assert!(!folder.is_due(start));
        assert!(folder.is_due(start + WINDOW));
        let out = folder.take(|e| (e.task_id.to_string(), "web".into()));
        assert!(folder.is_empty() && !folder.is_due(start + WINDOW));
        let summary: Vec<_> =
            out.iter().map(|e| (e.op.as_str(), e.pid, e.version, e.count, e.bytes, e.reason.as_str())).collect();
        assert_eq!(summary[0], ("open", 1, 1, 10_000, 0, ""));
        assert_eq!(summary[1], ("read", 1, 1, 10_000, 70_000, ""));
        assert_eq!(out.len(), 2 + others.len() + 1);
        assert!(out[2..2 + others.len()].iter().all(|e| e.count == 1 && e.last_time.is_empty()));
        assert_eq!(summary.last().unwrap(), &("denied", 9, 1, 3, 0, "NotOwner"));
        assert_eq!(out[0].service, "web");
        assert!(!out[0].last_time.is_empty() && out[0].last_time >= out[0].time);
        // Every access is accounted for, exactly.
        let total: u64 = out.iter().map(|e| e.count).sum();
        assert_eq!(total, 20_000 + others.len() as u64 + 3);
    }
}
