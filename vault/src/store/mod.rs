//! The storage interface: a revisioned key-value store with compare-and-swap transactions and
//! watches, shaped after etcd so that the embedded store (redb) and etcd are two implementations
//! of one contract.
//!
//! When each operation is allowed: any time after `open`. Every committed transaction gets the
//! next revision (strictly increasing, never reused); an entry remembers the revision that last
//! wrote it. A transaction applies all its operations or none: when one of its checks fails,
//! nothing is written and `StoreError::Conflict` names the key.
//!
//! Keys under [`UNWATCHED`] are append-only logs (the replicas' audit chains): stored, read and
//! committed like any other key, but never sent to subscribers, and never part of a listing of
//! a prefix outside them (etcd keeps them beside the watched prefix, so they would otherwise
//! flood every replica's watch and its index).

pub mod etcd;
pub mod redb;

use async_trait::async_trait;
use tokio::sync::broadcast;

/// Keys that subscribers never see (see the module's doc).
pub const UNWATCHED: &str = "logs/";

/// Position in the store's history.
pub type Revision = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the transaction that last wrote this key.
    pub mod_revision: Revision,
}

/// A precondition of a transaction on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist and have been last written at exactly this revision.
    At(Revision),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Deletes every key starting with `prefix`, as one operation however many there are (an
    /// object's versions: etcd allows at most 128 operations in a transaction). It may not
    /// share a key with another operation of its transaction. Watchers never see it: a
    /// [`Change`] lists one `Delete` per key it removed.
    DeletePrefix {
        prefix: String,
    },
}

impl Op {
    /// The key written, or the prefix of a prefix delete.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
            Op::DeletePrefix { prefix } => prefix,
        }
    }
}

/// Checks, then operations, applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub checks: Vec<(String, Expect)>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn check(mut self, key: impl Into<String>, expect: Expect) -> Self {
        self.checks.push((key.into(), expect));
        self
    }

    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.ops.push(Op::Put { key: key.into(), value });
        self
    }

    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    pub fn delete_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.ops.push(Op::DeletePrefix { prefix: prefix.into() });
        self
    }
}

/// A committed transaction, as watchers see it: only `Put` and `Delete` operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: Revision,
    pub ops: Vec<Op>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("concurrent change to {key}")]
    Conflict { key: String },
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("store is closed")]
    Closed,
    /// A remote store could not be reached at all (the message names it and why).
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Config(String),
}

/// A consistent listing and the revision it was read at.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub entries: Vec<Entry>,
    pub revision: Revision,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Every entry whose key starts with `prefix`, in key order.
    async fn range(&self, prefix: &str) -> Result<Snapshot, StoreError>;

    /// At most `limit` entries whose key starts with `prefix` and sorts after `after` (from the
    /// first when `None`), in key order: a long listing read page by page, in bounded memory.
    async fn range_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let all = self.range(prefix).await?;
        Ok(all.entries.into_iter().filter(|e| after.is_none_or(|a| e.key.as_str() > a)).take(limit).collect())
    }

    /// Applies `txn` atomically and durably; returns its revision once it is on disk.
    async fn commit(&self, txn: Txn) -> Result<Revision, StoreError>;

    /// Changes committed after this call. Pair with `range` for list-then-watch: subscribe
    /// first, then range, then skip changes at or below the snapshot's revision.
    fn subscribe(&self) -> broadcast::Receiver<Change>;

    /// Whether changes are flowing: `Err(why)` while a remote store is unreachable (new agent
    /// streams are refused then, since they would not hear of changes). Always fine locally.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}
