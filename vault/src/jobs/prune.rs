//! Pruning old versions of secrets and configs, so a value rotated every minute does not
//! fill etcd (2 GiB by default) with history nobody reads.
//!
//! Policy (`--keep-versions N`, default [`DEFAULT_KEEP`], as Vault's KV v2 keeps 10): the
//! newest `N` versions of each object stay; an older one goes only once it has not been
//! current for [`GRACE`], so a version that an agent may still be being sent, or that a task
//! read a moment ago, is never removed under it. The current version is never removed, and
//! nothing else refers to an old one: services and agents name objects, not versions; the
//! audit log names versions by number and keyed digest, which stay meaningful without the
//! value. `0` keeps every version. Each pruning is audited (`prune`, with the highest version
//! dropped and how many).

use super::JobError;
use crate::audit::{AuditEntry, AuditLog};
use crate::cluster::election::Term;
use crate::model::{Kind, VersionRecord};
use crate::objects::Objects;
use crate::store::StoreError;
use chrono::{DateTime, Utc};

pub const DEFAULT_KEEP: usize = 10;
/// How long a superseded version is kept at least.
pub const GRACE: chrono::Duration = chrono::Duration::minutes(10);
/// Versions dropped per transaction (etcd allows 128 operations in one); the next pass
/// takes the rest.
const PER_TXN: usize = 100;

/// The versions to drop from `versions` (oldest first, as records keep them) at `now`.
pub fn prunable(versions: &[VersionRecord], keep: usize, now: DateTime<Utc>) -> Vec<u64> {
    if keep == 0 || versions.len() <= keep {
        return Vec::new();
    }
    let candidates = versions.len() - keep;
    // A version stopped being current when its successor was created.
    versions
        .windows(2)
        .take(candidates)
        .take_while(|pair| pair[1].created_at + GRACE <= now)
        .map(|pair| pair[0].version)
        .take(PER_TXN)
        .collect()
}

/// One pass over every secret and config.
pub async fn run(
    objects: &Objects,
    audit: &AuditLog,
    replica: &str,
    keep: usize,
    now: DateTime<Utc>,
    term: Term,
) -> Result<(), JobError> {
    for kind in [Kind::Secret, Kind::Config] {
        for found in objects.list_found(kind).await.map_err(|e| JobError::Other(e.to_string()))? {
            let drop = prunable(&found.record.versions, keep, now);
            let Some(&highest) = drop.last() else { continue };
            match objects.drop_versions(kind, &found, &drop, |txn| term.fence(txn)).await {
                Ok(record) => {
                    tracing::info!(kind = %kind, name = %record.name, dropped = drop.len(), "pruned old versions");
                    let entry = AuditEntry {
                        version: Some(highest),
                        count: Some(drop.len() as u64),
                        reason: Some(format!("kept the newest {keep} versions")),
                        ..AuditEntry::now("prune").actor(format!("replica:{replica}")).object(kind, &record.name)
                    };
                    audit.record(entry).await;
                }
                // Rotated or removed meanwhile: the next pass sees it as it is then.
                Err(StoreError::Conflict { key }) if key != crate::cluster::election::LEADER_KEY => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(ages_minutes: &[i64], now: DateTime<Utc>) -> Vec<VersionRecord> {
        ages_minutes
            .iter()
            .enumerate()
            .map(|(i, age)| VersionRecord {
                version: i as u64 + 1,
                created_at: now - chrono::Duration::minutes(*age),
                size: 1,
            })
            .collect()
    }

    #[test]
    fn keeps_the_newest_and_what_was_current_lately() {
        let now = Utc::now();
        // 5 versions, each an hour apart: keep 2 → versions 1, 2, 3 go.
        let old = versions(&[300, 240, 180, 120, 60], now);
        assert_eq!(prunable(&old, 2, now), [1, 2, 3]);
        assert_eq!(prunable(&old, 5, now), Vec::<u64>::new());
        assert_eq!(prunable(&old, 0, now), Vec::<u64>::new(), "0 keeps all");
        // Version 2 was current until 5 minutes ago (3 came then): it stays, and so does what follows.
        let recent = versions(&[300, 240, 5, 2, 1], now);
        assert_eq!(prunable(&recent, 2, now), [1]);
        // The current version is never a candidate, even with keep 1 and old history.
        assert_eq!(prunable(&old, 1, now), [1, 2, 3, 4]);
        // At most one transaction's worth per pass.
        let many: Vec<i64> = (0..300).map(|i| 1000 - i).collect();
        assert_eq!(prunable(&versions(&many, now), 1, now).len(), PER_TXN);
    }
}
