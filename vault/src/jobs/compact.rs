//! Compacting etcd's history, as kube-apiserver does (`--etcd-compaction-interval`, 5 min):
//! every interval the leader compacts to the revision it saw one interval before, so at
//! least one interval of history stays for watches that resume (a watch older than that
//! re-lists; see `store::etcd`). Each round first makes a fenced write recording it, so a
//! replica that no longer leads compacts nothing. Compaction is etcd-wide: with other data in
//! the same etcd, pass `--etcd-compaction-interval 0` if they need longer history.
//! Defragmentation is left to the operator (it blocks each member while it runs).

use super::JobError;
use crate::cluster::election::Term;
use crate::store::{Revision, Store, Txn};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Where each round is recorded.
pub const COMPACTION_KEY: &str = "leader/compaction";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    pub replica: String,
    /// The revision history was compacted to this round (0: none yet).
    pub compacted: Revision,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// The rounds of one term (a new leader starts over: its first compaction comes one
/// interval after its first round).
pub struct Compactor {
    interval: Option<Duration>,
    next: Instant,
    /// The revision seen one round ago: what the next round compacts to.
    candidate: Option<Revision>,
}

impl Compactor {
    pub fn new(interval: Option<Duration>) -> Self {
        Self { interval, next: Instant::now(), candidate: None }
    }

    /// Runs a round if one is due; returns the revision compacted to, if any.
    pub async fn tick(
        &mut self,
        store: &dyn Store,
        client: &etcd_client::Client,
        replica: &str,
        term: Term,
    ) -> Result<Option<Revision>, JobError> {
        let Some(interval) = self.interval else { return Ok(None) };
        if Instant::now() < self.next {
            return Ok(None);
        }
        self.next = Instant::now() + interval;
        let target = self.candidate.unwrap_or(0);
        let round = Round { replica: replica.to_string(), compacted: target, time: chrono::Utc::now() };
        let txn = term.fence(Txn::new().put(COMPACTION_KEY, serde_json::to_vec(&round).expect("round serialises")));
        let seen = store.commit(txn).await?;
        self.candidate = Some(seen);
        if target == 0 {
            return Ok(None);
        }
        match client.clone().compact(target as i64, None).await {
            Ok(_) => {
                tracing::info!(revision = target, "compacted etcd history");
                Ok(Some(target))
            }
            // Someone (etcd's own auto-compaction, another tool) compacted further already.
            Err(e) if e.to_string().contains("compacted") => Ok(None),
            Err(e) => Err(JobError::Other(format!("etcd compaction: {e}"))),
        }
    }
}
