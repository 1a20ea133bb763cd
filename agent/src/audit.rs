//! Ships the FUSE filesystem's access events to the vault, in order, surviving outages.
//!
//! Events wait in a bounded in-memory queue until the vault acknowledges them. Reads of one
//! open file by one process that arrive together are folded into one entry with a byte count;
//! opens and denials never are. When the queue (or the filesystem's own event channel)
//! overflows, the loss is counted and reported as a `dropped` entry: never silent.

use crate::reconcile::Reconciler;
use hush_fuse::{AccessEvent, AccessOp, FileKind, SecretFs};
use hush_proto::v1 as pb;
use hush_proto::v1::node_client::NodeClient;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;
use tonic::transport::Channel;

/// Events held while the vault is unreachable (`HUSH_AUDIT_QUEUE` overrides, for tests).
const DEFAULT_QUEUE: usize = 100_000;

fn max_queue() -> usize {
    std::env::var("HUSH_AUDIT_QUEUE").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_QUEUE)
}
const MAX_BATCH: usize = 2_000;
const TICK: Duration = Duration::from_millis(20);
const RETRY: Duration = Duration::from_millis(500);

/// Where `--audit-log` writes: a file or standard output.
pub type LocalLog = Box<dyn Write + Send>;

pub struct Shipper {
    pub events: Receiver<AccessEvent>,
    pub fs: Arc<SecretFs>,
    pub reconciler: Arc<Reconciler>,
    pub vault: NodeClient<Channel>,
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
            (kind as i32, meta.name.clone(), meta.version)
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
        count: u64::from(op == "read"),
        reason,
        path: format!("/{}", event.path.trim_start_matches("root/")),
    }
}

/// Folds `next` into `last` when both are reads of the same file by the same process.
fn fold(last: &mut pb::AccessEvent, next: &pb::AccessEvent) -> bool {
    let same = last.op == "read"
        && next.op == "read"
        && (&last.task_id, &last.path, last.pid, last.version) == (&next.task_id, &next.path, next.pid, next.version);
    if same {
        last.bytes += next.bytes;
        last.count += next.count;
    }
    same
}

fn dropped(count: u64) -> pb::AccessEvent {
    pb::AccessEvent { time: rfc3339(std::time::SystemTime::now()), op: "dropped".into(), count, ..Default::default() }
}

impl Shipper {
    /// Runs until `stop` fires; then makes one last attempt to deliver what is queued.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let capacity = max_queue();
        let mut queue: VecDeque<pb::AccessEvent> = VecDeque::new();
        let mut lost = 0u64;
        let mut fs_dropped_seen = 0u64;
        let mut next_try = tokio::time::Instant::now();
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(TICK) => false,
                _ = stop.changed() => true,
            };
            self.collect(&mut queue, &mut lost, capacity);
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

    /// Moves the filesystem's events into the queue, folding reads.
    fn collect(&mut self, queue: &mut VecDeque<pb::AccessEvent>, lost: &mut u64, capacity: usize) {
        for event in self.events.try_iter() {
            let (task_id, service) = task_and_service(&event, &self.reconciler);
            let wire = to_wire(event, task_id, service);
            if let Some(log) = self.local_log.as_mut() {
                let line = serde_json::json!({
                    "time": wire.time, "op": wire.op, "node": self.node_id, "task": wire.task_id, "service": wire.service,
                    "name": wire.name, "version": wire.version, "path": wire.path, "pid": wire.pid, "uid": wire.uid,
                    "gid": wire.gid, "command": wire.command, "bytes": wire.bytes, "reason": wire.reason,
                });
                let _ = writeln!(log, "{line}");
            }
            if queue.back_mut().is_some_and(|last| fold(last, &wire)) {
                continue;
            }
            if queue.len() >= capacity {
                *lost += 1;
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

    fn read(pid: u32, bytes: u64) -> pb::AccessEvent {
        pb::AccessEvent {
            op: "read".into(),
            task_id: "t".into(),
            path: "/run/secrets/a".into(),
            pid,
            bytes,
            count: 1,
            ..Default::default()
        }
    }

    #[test]
    fn reads_of_one_process_fold_and_opens_never_do() {
        let mut last = read(1, 10);
        assert!(fold(&mut last, &read(1, 5)));
        assert_eq!((last.bytes, last.count), (15, 2));
        assert!(!fold(&mut last, &read(2, 5)));
        let mut open = pb::AccessEvent { op: "open".into(), ..read(1, 0) };
        assert!(!fold(&mut open, &pb::AccessEvent { op: "open".into(), ..read(1, 0) }));
    }
}
