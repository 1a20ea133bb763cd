//! `hush vault migrate --from redb:DIR --to etcd://...`: moves an embedded vault into etcd.
//!
//! What moves: every key of `store.redb` as stored (objects and every version, sealed, nodes,
//! services, tasks, join tokens: values are sealed with AAD naming their kind, ID and version,
//! not the store they sit in, so they open anywhere), the audit log (DATA_DIR/audit, as one
//! closed chain in the store, [`crate::audit::shared`]) and the shared key material (keyring,
//! CA, sealed CA key, unlock-only identity, [`crate::replica::publish`]). Nothing is opened:
//! migrate needs neither the key file nor the unlock key, so an autolocked vault moves as is
//! and its replicas unlock with the same unlock key.
//!
//! Order and re-runs: a marker (`cluster/migration`) is written first, the keyring last, in
//! one transaction that also removes the marker. A target holding a keyring is refused (a
//! vault, or a finished migration); one holding anything else is refused unless it carries
//! this source's marker, and then the interrupted migration starts again from the beginning
//! (every put is idempotent). The source is never written to but by redb's open.

use crate::audit::chain::{self, Head, StoredHead};
use crate::audit::shared;
use crate::layout::DataDir;
use crate::replica::{self, KEYRING_KEY};
use crate::store::redb::RedbStore;
use crate::store::{Store, StoreError, Txn};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::Path;

pub const MARKER_KEY: &str = "cluster/migration";
/// Keys per copy transaction (etcd takes at most 128 operations) and bytes (at most 1.5 MiB).
const BATCH_KEYS: usize = 64;
const BATCH_BYTES: usize = 1024 * 1024;
/// Bytes of audit lines per segment (as replicas write them).
const SEGMENT_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("--from must be redb:DIR (the data dir of an embedded vault), not {0:?}")]
    BadSource(String),
    #[error("{0} holds no embedded vault (no store.redb and keyring): nothing to migrate")]
    NoVault(String),
    #[error(
        "the vault in {0} is running (its store is locked): stop it first (`hush vault serve` must not run during a migration)"
    )]
    Running(String),
    #[error("{0} already holds a vault (or a migration that finished): nothing was changed")]
    Occupied(String),
    #[error(
        "{0} is not empty: migrate needs a prefix that holds nothing (use another prefix, e.g. etcd://HOST:PORT/hush2)"
    )]
    NotEmpty(String),
    #[error(
        "{url} holds an interrupted migration from {other}, not from {this}: finish that one, or use another prefix"
    )]
    OtherMigration { url: String, other: String, this: String },
    #[error("audit log {path}: {error}")]
    Audit { path: String, error: String },
    #[error(transparent)]
    Replica(#[from] replica::ReplicaError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Marker {
    /// The source data dir, canonical.
    from: String,
    /// The id the source's audit chain gets in the store.
    chain: String,
}

/// What was moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    pub keys: u64,
    pub bytes: u64,
    pub audit_entries: u64,
    /// The id the audit chain is kept under (`audit/head/<chain>`).
    pub chain: String,
    pub resumed: bool,
}

/// `redb:DIR` → DIR.
pub fn source_dir(from: &str) -> Result<&Path, MigrateError> {
    from.strip_prefix("redb:")
        .filter(|d| !d.is_empty())
        .map(Path::new)
        .ok_or_else(|| MigrateError::BadSource(from.into()))
}

/// Moves the embedded vault in `dir` into `target` (reached as `url`); `progress` is told
/// what was done so far, now and then.
pub async fn migrate(
    dir: &DataDir,
    target: &dyn Store,
    url: &str,
    mut progress: impl FnMut(&str),
) -> Result<Migrated, MigrateError> {
    let shown = dir.root().display().to_string();
    if !dir.store().is_file() || !dir.keyring().is_file() {
        return Err(MigrateError::NoVault(shown));
    }
    let source = RedbStore::open(&dir.store()).map_err(|e| match e.to_string() {
        text if text.contains("already open") || text.contains("lock") => MigrateError::Running(shown.clone()),
        _ => MigrateError::Store(e),
    })?;
    let from = std::fs::canonicalize(dir.root()).map_or(shown.clone(), |p| p.display().to_string());

    // The target: empty, or this source's interrupted migration.
    if target.get(KEYRING_KEY).await?.is_some() {
        return Err(MigrateError::Occupied(url.into()));
    }
    let marker = match target.get(MARKER_KEY).await? {
        Some(entry) => {
            let marker: Marker =
                serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt(format!("{MARKER_KEY}: {e}")))?;
            if marker.from != from {
                return Err(MigrateError::OtherMigration { url: url.into(), other: marker.from, this: from });
            }
            progress(&format!("resuming an interrupted migration from {from}"));
            Some(marker)
        }
        None => {
            let any = target.range_page("", None, 1).await?;
            let logs = target.range_page(shared::SEGMENTS, None, 1).await?;
            if !any.is_empty() || !logs.is_empty() {
                return Err(MigrateError::NotEmpty(url.into()));
            }
            None
        }
    };
    progress(&format!("moving {from} to {url} (keep the vault stopped until this ends)"));
    let resumed = marker.is_some();
    let marker = marker.unwrap_or_else(|| Marker { from: from.clone(), chain: crate::model::new_id() });
    target.commit(Txn::new().put(MARKER_KEY, serde_json::to_vec(&marker).expect("marker serialises"))).await?;

    // Every key of the embedded store, a page at a time.
    let (mut keys, mut bytes) = (0u64, 0u64);
    let mut after: Option<String> = None;
    let mut last_report = std::time::Instant::now();
    loop {
        let page = source.range_page("", after.as_deref(), BATCH_KEYS).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        let mut txn = Txn::new();
        let mut txn_bytes = 0;
        for entry in page {
            // The embedded vault's own chain head: its chain moves below, under its new id.
            if entry.key == crate::audit::HEAD_KEY {
                continue;
            }
            if txn_bytes + entry.value.len() > BATCH_BYTES && !txn.ops.is_empty() {
                target.commit(std::mem::take(&mut txn)).await?;
                txn_bytes = 0;
            }
            txn_bytes += entry.value.len();
            keys += 1;
            bytes += entry.value.len() as u64;
            txn = txn.put(entry.key, entry.value);
        }
        if !txn.ops.is_empty() {
            target.commit(txn).await?;
        }
        if last_report.elapsed() >= std::time::Duration::from_secs(1) {
            progress(&format!("copied {keys} keys ({bytes} bytes)"));
            last_report = std::time::Instant::now();
        }
    }
    progress(&format!("copied {keys} keys ({bytes} bytes)"));

    let head = source.get(crate::audit::HEAD_KEY).await?;
    let audit_entries =
        copy_audit(&dir.audit_dir(), head.as_ref().map(|e| e.value.as_slice()), target, &marker.chain, &mut progress)
            .await?;
    progress(&format!("copied the audit log: {audit_entries} entries"));

    // Last, all at once: the key material (keyring last), and the marker goes.
    replica::publish_with(dir, target, url, Txn::new().delete(MARKER_KEY)).await?;
    Ok(Migrated { keys, bytes, audit_entries, chain: marker.chain, resumed })
}

/// Copies the audit files, up to the recorded head, as segments of chain `chain`, then its
/// head; returns the entries copied.
async fn copy_audit(
    audit_dir: &Path,
    head: Option<&[u8]>,
    target: &dyn Store,
    chain_id: &str,
    progress: &mut impl FnMut(&str),
) -> Result<u64, MigrateError> {
    let audit_err = |path: &Path, e: &dyn std::fmt::Display| MigrateError::Audit {
        path: path.display().to_string(),
        error: e.to_string(),
    };
    let head = match StoredHead::parse(head) {
        StoredHead::Keyed(head) => head,
        StoredHead::None => return Ok(0),
        _ => {
            return Err(audit_err(
                audit_dir,
                &"the recorded chain head is not a keyed head: run `hush audit verify` on the vault first",
            ));
        }
    };
    let files = chain::log_files(audit_dir).map_err(|e| audit_err(audit_dir, &e))?;
    let mut segment = String::new();
    let mut first = 0u64;
    let mut copied = 0u64;
    let mut head_segment = None;
    'files: for file in files {
        let reader = std::io::BufReader::new(std::fs::File::open(&file).map_err(|e| audit_err(&file, &e))?);
        for line in reader.lines() {
            let line = line.map_err(|e| audit_err(&file, &e))?;
            let seq = serde_json::from_str::<crate::audit::AuditEntry>(&line).map(|e| e.seq).unwrap_or(copied + 1);
            if seq > head.seq {
                break 'files;
            }
            if segment.is_empty() {
                first = seq;
            }
            segment.push_str(&line);
            segment.push('\n');
            copied += 1;
            if seq == head.seq {
                head_segment = Some(first);
            }
            if segment.len() >= SEGMENT_BYTES {
                put_segment(target, chain_id, first, &mut segment).await?;
                progress(&format!("copied {copied} audit entries"));
            }
        }
    }
    if !segment.is_empty() {
        put_segment(target, chain_id, first, &mut segment).await?;
    }
    let stored = Head { segment: head_segment, activity: Some(head.seq), ..head };
    let value = serde_json::to_vec(&stored).expect("heads serialise");
    target.commit(Txn::new().put(crate::audit::replica_head_key(chain_id), value)).await?;
    Ok(copied)
}

async fn put_segment(target: &dyn Store, chain: &str, first: u64, text: &mut String) -> Result<(), MigrateError> {
    let value = std::mem::take(text).into_bytes();
    target.commit(Txn::new().put(shared::segment_key(chain, first), value)).await?;
    Ok(())
}
