//! The singleton jobs: work one replica does for all, run by the leader only, every write
//! fenced by its term (see [`crate::cluster::election`]).
//!
//! - a leader heartbeat (`leader/heartbeat`, etcd only): the fenced write that tells a
//!   replica it no longer leads, at once after a pause;
//! - pruning old versions of secrets and configs ([`prune`]);
//! - cleaning up what no one can use any more ([`cleanup`]);
//! - compacting etcd's history ([`compact`]).
//!
//! A refused fence ends the term: the replica campaigns again. Other failures are logged and
//! the job runs again at its next turn.

pub mod cleanup;
pub mod compact;
pub mod prune;

use crate::cluster::election::{Term, is_fenced};
use crate::cluster::{Backend, Cluster};
use crate::store::{Revision, StoreError, Txn};
use crate::vault::Vault;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the leader writes its heartbeat.
pub const HEARTBEAT_KEY: &str = "leader/heartbeat";
/// How often versions are pruned and dead records cleaned up.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("fencing token refused: another replica leads")]
    Fenced,
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Other(String),
}

impl From<StoreError> for JobError {
    fn from(error: StoreError) -> Self {
        if is_fenced(&error) { JobError::Fenced } else { JobError::Store(error) }
    }
}

/// What the leader heartbeat holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub replica: String,
    pub token: Revision,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// Runs the jobs while `term` lasts; returns when a fenced write is refused or the vault stops.
pub async fn lead(vault: &Arc<Vault>, cluster: &Cluster, term: Term) {
    let mut tick = tokio::time::interval(cluster.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping_due = Instant::now();
    let mut compaction = compact::Compactor::new(cluster.settings.compaction_interval);
    loop {
        tick.tick().await;
        let mut outcome = heartbeat(vault, cluster, term).await;
        if outcome.is_ok() && Instant::now() >= housekeeping_due {
            housekeeping_due = Instant::now() + HOUSEKEEPING;
            outcome = housekeeping(vault, cluster, term).await;
        }
        if outcome.is_ok()
            && let Backend::Etcd(etcd) = cluster.backend()
        {
            outcome = compaction.tick(vault.store().as_ref(), &etcd.client, &cluster.replica_id, term).await.map(drop);
        }
        match outcome {
            Ok(()) => {}
            Err(JobError::Fenced) => {
                tracing::warn!(
                    token = term.token,
                    "fencing token {} refused: this replica no longer leads",
                    term.token
                );
                return;
            }
            Err(e) => tracing::warn!(error = %e, "singleton job"),
        }
    }
}

/// The leader's heartbeat: a fenced write, so a replica that was paused past its lease learns
/// at its first tick that its term is over. The embedded store has no other leader to fear.
async fn heartbeat(vault: &Vault, cluster: &Cluster, term: Term) -> Result<(), JobError> {
    if matches!(cluster.backend(), Backend::Embedded) {
        return Ok(());
    }
    let beat = Heartbeat { replica: cluster.replica_id.clone(), token: term.token, time: chrono::Utc::now() };
    let txn = term.fence(Txn::new().put(HEARTBEAT_KEY, serde_json::to_vec(&beat).expect("heartbeat serialises")));
    vault.store().commit(txn).await?;
    Ok(())
}

async fn housekeeping(vault: &Arc<Vault>, cluster: &Cluster, term: Term) -> Result<(), JobError> {
    let now = chrono::Utc::now();
    // Pruning needs the data key's objects: nothing to prune while locked.
    if let Ok(objects) = vault.objects() {
        prune::run(&objects, vault.audit(), &cluster.replica_id, cluster.settings.keep_versions, now, term).await?;
    }
    let alive = |lease: i64| {
        let backend = cluster.backend().clone();
        async move {
            match backend {
                Backend::Embedded => false,
                Backend::Etcd(etcd) => lease != 0 && lease_alive(&etcd.client, lease).await,
            }
        }
    };
    cleanup::run(vault.store().as_ref(), &cluster.replica_id, now, term, alive).await
}

/// Whether etcd still holds `lease` (unknown counts as alive: never forget on a doubt).
pub async fn lease_alive(client: &etcd_client::Client, lease: i64) -> bool {
    let mut leases = client.lease_client();
    match tokio::time::timeout(Duration::from_secs(2), leases.time_to_live(lease, None)).await {
        Ok(Ok(response)) => response.ttl() > 0,
        _ => true,
    }
}
