//! Sends a node's assignment on its stream in bounded parts, with back-pressure, so that the
//! vault never holds more than a few values per stream however large the assignment (100 tasks
//! × 10 values of 1 MB is 1 GB for one node).
//!
//! - Each value is opened just before it is sent, and only once the stream has room for it (a
//!   few parts are queued per stream, then the agent's HTTP/2 window holds the sender back).
//! - Tasks' values go first, then the service directories' (a task is waiting for its files).
//! - A large snapshot goes out as a series of complete ones: after at least [`CHUNK_BYTES`] of
//!   values, and once every task has its values, an end marker makes what has fully arrived
//!   current (see [`Plan::partial`]). So the first task of a node that is owed 1 GB gets its
//!   files after its own, not after the gigabyte.
//! - While it sends, the stream keeps reading the store's changes (a stream blocked on a slow
//!   agent would otherwise pin every change in the store's broadcast buffer, values included).
//!   A change to the node's assignment cuts the snapshot short at the next complete one, so a
//!   new task or a rotation waits for at most one task or service's values, not for the rest
//!   of the gigabyte.
//! - At most [`STREAMS_PER_NODE`] streams per node at a time on a replica.

use crate::assign::{Plan, ValueKey, value_part};
use crate::objects::Objects;
use crate::store::Change;
use hush_proto::v1 as pb;
use hush_proto::v1::assignment_part::Part;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

/// Values sent between two end markers of one snapshot, at least (a task's or service's values
/// are never split across two).
pub const CHUNK_BYTES: usize = 32 << 20;

/// Concurrent assignment streams one node may hold on one replica. An agent holds one; a
/// reconnect or a hand-over to a new agent process overlaps it briefly with the old one.
pub const STREAMS_PER_NODE: usize = 4;

/// What a stream sent, as far as the agent applied it.
pub struct Sent {
    /// The last snapshot the agent was sent whole (the plan, or a part of it).
    pub plan: Plan,
    /// The values the agent holds from this stream: those `plan` names.
    pub held: HashSet<ValueKey>,
    /// Whether a change to the assignment cut it short (compute the plan again at once).
    pub interrupted: bool,
}

/// A stream's channel and the store's changes, which it keeps reading while it waits.
pub struct Link<'a> {
    pub tx: &'a mpsc::Sender<Result<pb::AssignmentPart, Status>>,
    pub changes: &'a mut broadcast::Receiver<Change>,
    /// Set once a change that may alter the plan being sent was seen (or changes were missed).
    pub changed: bool,
}

impl Link<'_> {
    fn note(&mut self, plan: &Plan, change: Result<Change, broadcast::error::RecvError>) {
        match change {
            Ok(change) => self.changed |= change.ops.iter().any(|op| plan.affected_by(op)),
            Err(broadcast::error::RecvError::Lagged(_)) => self.changed = true,
            // The store is gone: the caller's own wait sees it.
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    /// Reads the changes already queued, without waiting.
    fn drain(&mut self, plan: &Plan) {
        loop {
            match self.changes.try_recv() {
                Ok(change) => self.note(plan, Ok(change)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    self.note(plan, Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(_) => return,
            }
        }
    }

    /// Waits for room on the stream (reading changes meanwhile), then sends. `false`: the agent
    /// went away.
    async fn send(&mut self, plan: &Plan, part: Part) -> bool {
        loop {
            tokio::select! {
                permit = self.tx.reserve() => match permit {
                    Ok(permit) => {
                        permit.send(Ok(pb::AssignmentPart { part: Some(part) }));
                        return true;
                    }
                    Err(_) => return false,
                },
                change = self.changes.recv() => self.note(plan, change),
            }
        }
    }

    /// One complete snapshot: `plan`'s tasks and services (their values sent before), then the
    /// end marker.
    async fn snapshot(&mut self, plan: &Plan, shown: &Plan, revision: u64) -> bool {
        for task in shown.task_parts() {
            if !self.send(plan, Part::Task(task)).await {
                return false;
            }
        }
        for service in shown.service_parts() {
            if !self.send(plan, Part::Service(service)).await {
                return false;
            }
        }
        self.send(plan, Part::End(revision)).await
    }
}

/// Sends `plan` to an agent that holds `held` and shows `current` (the last snapshot it was
/// sent, if any). `None`: the agent went away.
pub async fn send_plan(
    objects: &Objects,
    plan: &Plan,
    current: Option<&Plan>,
    held: &HashSet<ValueKey>,
    revision: u64,
    link: &mut Link<'_>,
) -> Result<Option<Sent>, Status> {
    // The values the agent will hold once the next end marker names them.
    let mut have = held.clone();
    let mut shown = current.cloned();
    let mut since_end = 0;
    let items = plan.items();
    for (i, keys) in items.iter().enumerate() {
        for key in keys {
            if have.contains(key) {
                continue;
            }
            // An object removed meanwhile: the agent skips its files; the next plan drops them.
            let Some(value) = value_part(objects, key).await? else { continue };
            since_end += value.data.len();
            if !link.send(plan, Part::Value(value)).await {
                return Ok(None);
            }
            have.insert(key.clone());
        }
        link.drain(plan);
        let last = i + 1 == items.len();
        let tasks_done = i + 1 == plan.task_count();
        if last || since_end == 0 || !(since_end >= CHUNK_BYTES || tasks_done || link.changed) {
            continue;
        }
        let part = plan.partial(shown.as_ref(), &have);
        if !link.snapshot(plan, &part, revision).await {
            return Ok(None);
        }
        // The agent forgets what the snapshot does not name (an unfinished item's values).
        have = part.values().into_iter().filter(|k| have.contains(k)).collect();
        since_end = 0;
        link.drain(plan);
        if link.changed {
            return Ok(Some(Sent { plan: part, held: have, interrupted: true }));
        }
        shown = Some(part);
    }
    if !link.snapshot(plan, plan, revision).await {
        return Ok(None);
    }
    link.drain(plan);
    let held = plan.values().into_iter().filter(|k| have.contains(k)).collect();
    Ok(Some(Sent { plan: plan.clone(), held, interrupted: link.changed }))
}

/// Open assignment streams per node on this replica.
#[derive(Debug, Default)]
pub struct StreamSlots(Arc<Mutex<HashMap<String, usize>>>);

/// One stream's place; freed when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<Mutex<HashMap<String, usize>>>,
    node_id: String,
}

impl StreamSlots {
    /// A place for one more stream of `node_id`, or `None` if it holds [`STREAMS_PER_NODE`].
    pub fn take(&self, node_id: &str) -> Option<StreamSlot> {
        let mut slots = self.0.lock().expect("not poisoned");
        let open = slots.entry(node_id.to_string()).or_default();
        if *open >= STREAMS_PER_NODE {
            return None;
        }
        *open += 1;
        Some(StreamSlot { slots: self.0.clone(), node_id: node_id.to_string() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().expect("not poisoned");
        if let Some(open) = slots.get_mut(&self.node_id) {
            *open -= 1;
            if *open == 0 {
                slots.remove(&self.node_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key;
    use crate::model::Kind;
    use crate::nodes::{NodeRecord, node_key};
    use crate::secret::SecretBytes;
    use crate::services::Services;
    use crate::store::Store;
    use crate::store::redb::RedbStore;
    use crate::tasks::Tasks;
    use std::collections::BTreeMap;

    /// Services `a` and `b` (one secret each) that node n1 may run, and a task of `a` on it.
    async fn setup() -> (tempfile::TempDir, Arc<RedbStore>, Arc<Objects>, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let objects = Arc::new(Objects::new(store.clone(), Key::random()));
        let services = Services::new(objects.clone());
        let mut ids = Vec::new();
        for name in ["a", "b"] {
            objects
                .create(Kind::Secret, name, BTreeMap::new(), SecretBytes::new(name.as_bytes().to_vec()))
                .await
                .unwrap();
            ids.push(services.create(name, &[name.into()], &[], BTreeMap::new(), &[]).await.unwrap().id);
        }
        let node = NodeRecord::fixture("n1");
        store.commit(crate::store::Txn::new().put(node_key("n1"), serde_json::to_vec(&node).unwrap())).await.unwrap();
        Tasks::new(store.clone()).start("n1", &ids[0], "a", "", None).await.unwrap();
        (dir, store, objects, ids[1].clone())
    }

    /// V(alue), T(ask), S(ervice), E(nd), and each value's plaintext.
    fn shape(part: &pb::AssignmentPart) -> String {
        match part.part.as_ref().unwrap() {
            Part::Value(v) => format!("V{}", String::from_utf8_lossy(&v.data)),
            Part::Task(_) => "T".into(),
            Part::Service(s) => format!("S{}", s.name),
            Part::End(_) => "E".into(),
        }
    }

    #[tokio::test]
    async fn tasks_values_first_then_a_complete_snapshot_then_the_services() {
        let (_dir, store, objects, _) = setup().await;
        let plan = crate::assign::plan_for(&objects, "n1").await.unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let mut changes = store.subscribe();
        let mut link = Link { tx: &tx, changes: &mut changes, changed: false };
        let sent = send_plan(&objects, &plan, None, &HashSet::new(), 0, &mut link).await.unwrap().unwrap();
        drop(tx);
        let mut parts = Vec::new();
        while let Some(part) = rx.recv().await {
            parts.push(shape(&part.unwrap()));
        }
        // The task's value, then a snapshot with the task and the service it completes (not `b`,
        // whose value is not there yet), then `b`'s value and the whole assignment.
        assert_eq!(parts.join(" "), "Va T Sa E Vb T Sa Sb E");
        assert!(!sent.interrupted && sent.plan == plan && sent.held == plan.values());
        // Sent again to an agent holding it all: no value goes twice.
        let (tx, mut rx) = mpsc::channel(64);
        let mut link = Link { tx: &tx, changes: &mut changes, changed: false };
        send_plan(&objects, &plan, Some(&sent.plan), &sent.held, 0, &mut link).await.unwrap().unwrap();
        drop(tx);
        let mut parts = Vec::new();
        while let Some(part) = rx.recv().await {
            parts.push(shape(&part.unwrap()));
        }
        assert_eq!(parts.join(" "), "T Sa Sb E");
    }

    #[tokio::test]
    async fn a_change_while_blocked_on_a_slow_agent_cuts_the_snapshot_short() {
        let (_dir, store, objects, b) = setup().await;
        let plan = crate::assign::plan_for(&objects, "n1").await.unwrap();
        // Room for one part: the sender waits for this reader after every part.
        let (tx, mut rx) = mpsc::channel(1);
        let mut changes = store.subscribe();
        let sender = {
            let (objects, plan) = (objects.clone(), plan.clone());
            tokio::spawn(async move {
                let mut link = Link { tx: &tx, changes: &mut changes, changed: false };
                send_plan(&objects, &plan, None, &HashSet::new(), 0, &mut link).await.unwrap().unwrap()
            })
        };
        let first = rx.recv().await.unwrap().unwrap();
        // A new task on the node while the sender waits: the plan being sent is out of date.
        Tasks::new(store.clone()).start("n1", &b, "b", "", None).await.unwrap();
        let mut parts = vec![shape(&first)];
        while let Some(part) = rx.recv().await {
            parts.push(shape(&part.unwrap()));
        }
        let sent = sender.await.unwrap();
        assert_eq!(parts.join(" "), "Va T Sa E");
        assert!(sent.interrupted);
        assert_eq!(sent.held.len(), 1);
        assert_eq!(sent.plan.task_count(), 1);
    }

    #[test]
    fn a_node_holds_at_most_its_streams() {
        let slots = StreamSlots::default();
        let held: Vec<_> = (0..STREAMS_PER_NODE).map(|_| slots.take("n1").unwrap()).collect();
        assert!(slots.take("n1").is_none());
        assert!(slots.take("n2").is_some(), "other nodes are not affected");
        drop(held);
        assert!(slots.take("n1").is_some());
    }
}
