//! Cleaning up records no one can use any more. Nodes themselves are never removed by the
//! vault: as Swarm keeps a `Down` node until `docker node rm` (and Kubernetes a `NotReady`
//! one), a node that stopped answering keeps its identity and comes back with it. What goes:
//!
//! - tasks whose node or service no longer exists (a `node rm` of more tasks than one
//!   transaction holds, cut short by a crash, leaves these);
//! - task owners (kept for late audit reports) older than [`crate::tasks::OWNER_DAYS`], or of
//!   a removed node;
//! - join tokens past their expiry (they can admit no one);
//! - member records of replicas with no heartbeat for [`FORGET_AFTER`] and no live lease, with
//!   their advertise entries (which live under the replica's lease, but an entry written by a
//!   version before that has none).
//!
//! Every delete is fenced by the leader's term, at most [`PER_TXN`] per transaction.

use super::JobError;
use crate::cluster::election::Term;
use crate::cluster::members::{FORGET_AFTER, MEMBER_PREFIX, MemberRecord};
use crate::store::{Store, Txn};
use crate::tasks::{OWNER_DAYS, TaskOwner, TaskRecord};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

/// Deletes per transaction (etcd allows 128 operations in one).
pub const PER_TXN: usize = 100;

/// One pass. `lease_alive` says whether a member's lease is still held.
pub async fn run<F, Fut>(
    store: &dyn Store,
    replica: &str,
    now: DateTime<Utc>,
    term: Term,
    lease_alive: F,
) -> Result<(), JobError>
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut dead = Vec::new();
    // Tasks first, then nodes and services: a task listed has a node and a service created
    // before it, so a missing one was removed, not yet to come.
    let tasks = store.range("task/").await?.entries;
    let owners = store.range("task-owner/").await?.entries;
    let nodes = ids(&store.range("node/").await?.entries, "node/");
    let services = ids(&store.range("service/obj/").await?.entries, "service/obj/");
    for entry in &tasks {
        let Ok(task) = serde_json::from_slice::<TaskRecord>(&entry.value) else { continue };
        if !nodes.contains(&task.node_id) || !services.contains(&task.service_id) {
            dead.push(entry.key.clone());
        }
    }
    let owned_since = now - chrono::Duration::days(OWNER_DAYS);
    for entry in &owners {
        let node = entry.key.trim_start_matches("task-owner/").split('/').next().unwrap_or_default();
        let old = serde_json::from_slice::<TaskOwner>(&entry.value).is_ok_and(|o| o.started_at < owned_since);
        if old || !nodes.contains(node) {
            dead.push(entry.key.clone());
        }
    }
    for entry in store.range(crate::join_token::PREFIX).await?.entries {
        if crate::join_token::decode(&entry).is_ok_and(|t| now >= t.expires_at) {
            dead.push(entry.key);
        }
    }
    for entry in store.range(MEMBER_PREFIX).await?.entries {
        let Ok(member) = serde_json::from_slice::<MemberRecord>(&entry.value) else { continue };
        if member.id != replica && member.heartbeat_at + FORGET_AFTER < now && !lease_alive(member.lease).await {
            dead.push(entry.key);
            dead.push(format!("{}{}", crate::replica::ADVERTISE_PREFIX, member.id));
        }
    }
    for chunk in dead.chunks(PER_TXN) {
        store.commit(term.fence(chunk.iter().fold(Txn::new(), |txn, key| txn.delete(key.clone())))).await?;
    }
    if !dead.is_empty() {
        tracing::info!(records = dead.len(), "cleaned up records no one can use");
    }
    Ok(())
}

fn ids(entries: &[crate::store::Entry], prefix: &str) -> HashSet<String> {
    entries.iter().filter_map(|e| e.key.strip_prefix(prefix)).map(str::to_string).collect()
}
