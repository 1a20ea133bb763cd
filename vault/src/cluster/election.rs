//! One leader among the replicas of a store, and its fencing token.
//!
//! On etcd a replica leads once its create-only transaction on [`LEADER_KEY`], attached to the
//! replica's lease, succeeds: `If(create_revision(key) == 0) Then(put key, lease)`. The revision
//! of that transaction is the replica's fencing token; the key is never written again while it
//! leads, so its `mod_revision` stays equal to the token. Every singleton transaction carries
//! `check(LEADER_KEY, At(token))` ([`Term::fence`]): once the lease has expired (the replica was
//! paused, cut off or killed) and another replica holds the key, the old leader's writes fail in
//! etcd itself, whatever the old leader believes. Candidates wait on a watch of the key and
//! try again when it is deleted.
//!
//! An embedded store has one vault: it leads from the start, with the revision of its own
//! write of the key as its token.

use crate::store::{Expect, Revision, Store, StoreError, Txn};
use chrono::{DateTime, Utc};
use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;

/// The key whose holder leads.
pub const LEADER_KEY: &str = "leader/key";

/// A term of leadership: what every singleton transaction is fenced by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// The revision that created the leader key for this term.
    pub token: Revision,
}

impl Term {
    /// `txn`, valid only while this term lasts: its first check is the leader key at `token`,
    /// so a refusal names [`LEADER_KEY`] (see [`is_fenced`]).
    pub fn fence(&self, mut txn: Txn) -> Txn {
        txn.checks.insert(0, (LEADER_KEY.to_string(), Expect::At(self.token)));
        txn
    }
}

/// Whether a commit was refused because the term it was fenced by is over.
pub fn is_fenced(error: &StoreError) -> bool {
    matches!(error, StoreError::Conflict { key } if key == LEADER_KEY)
}

/// What the leader key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub replica: String,
    pub address: String,
    pub since: DateTime<Utc>,
}

/// Who leads now, as the store says (`None`: nobody, e.g. between a lease expiring and the
/// next campaign).
pub async fn current(store: &dyn Store) -> Result<Option<(LeaderRecord, Revision)>, StoreError> {
    let Some(entry) = store.get(LEADER_KEY).await? else { return Ok(None) };
    let record = serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt(format!("{LEADER_KEY}: {e}")))?;
    Ok(Some((record, entry.mod_revision)))
}

/// The embedded store's term: its one vault leads, from its own write of the key.
pub async fn lead_alone(store: &dyn Store, record: &LeaderRecord) -> Result<Term, StoreError> {
    let value = serde_json::to_vec(record).expect("record serialises");
    let token = store.commit(Txn::new().put(LEADER_KEY, value)).await?;
    Ok(Term { token })
}

/// Campaigns on etcd until this replica leads; returns its term. `lease` is the replica's
/// current lease (`None` while it has none); `recheck` bounds each wait on the watch.
pub async fn campaign(
    client: &Client,
    prefix: &str,
    record: &LeaderRecord,
    lease: &mut watch::Receiver<Option<i64>>,
    recheck: Duration,
) -> Term {
    let key = format!("{prefix}{LEADER_KEY}");
    let value = serde_json::to_vec(record).expect("record serialises");
    let mut kv = client.kv_client();
    loop {
        let Some(lease_id) = current_lease(lease).await else { continue };
        let txn = etcd_client::Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value.clone(), Some(PutOptions::new().with_lease(lease_id)))])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = match kv.txn(txn).await {
            Ok(response) => response,
            Err(e) => {
                // Etcd unreachable, or the lease expired under us: the presence task grants
                // another; try again shortly.
                tracing::debug!(error = %e, "campaign for leadership");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let revision = response.header().map_or(0, |h| h.revision());
        if response.succeeded() {
            return Term { token: revision as Revision };
        }
        let holder = response.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().first().map(|kv| (kv.lease(), kv.mod_revision())),
            _ => None,
        });
        match holder {
            // Ours already: an earlier attempt went through but its answer was lost.
            Some((holder_lease, mod_revision)) if holder_lease == lease_id => {
                return Term { token: mod_revision as Revision };
            }
            // Held by no lease: written by an embedded vault this store was migrated from. It
            // would never expire: remove it (if still that one) and campaign.
            Some((0, mod_revision)) => {
                let stale = etcd_client::Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_revision)])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                if let Err(e) = kv.txn(stale).await {
                    tracing::debug!(error = %e, "removing a leader key held by no lease");
                }
            }
            Some(_) => wait_for_vacancy(client, &key, revision + 1, recheck).await,
            None => {}
        }
    }
}

/// The lease this replica holds now, waiting a little for one while it has none.
async fn current_lease(lease: &mut watch::Receiver<Option<i64>>) -> Option<i64> {
    if let Some(id) = *lease.borrow_and_update() {
        return Some(id);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), lease.changed()).await;
    *lease.borrow_and_update()
}

/// Returns once `key` is deleted after `from`, or after `recheck` (a lost watch must not stall
/// the campaign).
async fn wait_for_vacancy(client: &Client, key: &str, from: i64, recheck: Duration) {
    let wait = async {
        let mut watch_client = client.watch_client();
        let Ok(mut stream) = watch_client.watch(key, Some(WatchOptions::new().with_start_revision(from))).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        };
        while let Ok(Some(response)) = stream.message().await {
            if response.canceled() || response.events().iter().any(|e| e.event_type() == EventType::Delete) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(recheck, wait).await;
}
