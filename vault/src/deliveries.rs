//! Delivery audit: every value the vault sends a node is recorded once, as a `deliver` entry
//! (secret or config, version, node, and the task it was sent for), so `hush audit --secret X`
//! lists every node that ever received X. A reconnecting agent is sent its values again; those
//! re-sends are not new deliveries and are not recorded again.
//!
//! What was recorded is kept in memory per node: the values of its current assignment, so it
//! stays as small as the assignment. After a vault restart the next assignment of each node is
//! recorded once more (the log then says the values were sent again, which they were).

use crate::assign::Plan;
use crate::audit::AuditEntry;
use crate::model::Kind;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// One value: (kind, object ID, version). A node is sent each value once, however many of its
/// tasks use it; the entry names the first of them.
type Key = (Kind, String, u64);

#[derive(Debug, Default)]
pub struct Delivered(Mutex<HashMap<String, HashSet<Key>>>);

impl Delivered {
    /// The `deliver` entries for the values `plan` gives `node_id` that were not recorded yet,
    /// one per (object, version). From now on the node's record is exactly `plan`'s values (a
    /// value no task of the node uses any more is forgotten, and recorded again if it comes back).
    pub fn new_entries(&self, node_id: &str, plan: &Plan) -> Vec<AuditEntry> {
        let mut current: HashSet<Key> = HashSet::new();
        let mut nodes = self.0.lock().expect("not poisoned");
        let sent = nodes.entry(node_id.to_string()).or_default();
        let mut entries = Vec::new();
        for d in plan.deliveries() {
            let key = (d.kind, d.object_id.to_string(), d.version);
            if !sent.contains(&key) && !current.contains(&key) {
                entries.push(AuditEntry {
                    node: Some(node_id.to_string()),
                    service: Some(d.service.to_string()),
                    task: d.task_id.map(str::to_string),
                    version: Some(d.version),
                    ..AuditEntry::now("deliver").actor(format!("node:{node_id}")).object(d.kind, d.name)
                });
            }
            current.insert(key);
        }
        *sent = current;
        entries
    }

    /// A removed node's record.
    pub fn forget(&self, node_id: &str) {
        self.0.lock().expect("not poisoned").remove(node_id);
    }
}
