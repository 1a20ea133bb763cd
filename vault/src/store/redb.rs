//! The embedded store: one redb file in the data dir.
//!
//! Writes go through a single writer thread that commits queued transactions together
//! (group commit): one fsync acknowledges a whole batch, so concurrent creates are not
//! limited to one disk flush each. redb's copy-on-write commit makes every acknowledged
//! transaction survive `kill -9` and power loss, and a torn write is never visible.

use super::{Change, Entry, Expect, Op, Revision, Snapshot, Store, StoreError, Txn, UNWATCHED};
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::{broadcast, oneshot};

/// key → mod_revision (8 bytes, big-endian) ‖ value
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// "revision" → the last committed revision
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Most transactions folded into one commit.
const MAX_BATCH: usize = 512;
/// redb's page cache (reads and the write buffer). redb's default is 1 GiB, and the vault locks
/// its memory: with 1,000 values of 1 MB stored that cache alone kept ~1 GB resident. Values are
/// read once per delivery, so caching them buys little; the B-tree's branch pages and the small
/// records (objects, services, tasks, nodes) fit many times over.
const CACHE_BYTES: usize = 32 << 20;

type Reply = oneshot::Sender<Result<Revision, StoreError>>;

pub struct RedbStore {
    db: Arc<Database>,
    /// `None` only while dropping.
    writer: Option<mpsc::Sender<(Txn, Reply)>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    changes: broadcast::Sender<Change>,
}

impl Drop for RedbStore {
    /// Closes the queue and waits for the writer: once dropped, the file is closed and can be
    /// opened again at once (by the same process, as `hush dev` does after `init`).
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = redb::Builder::new().set_cache_size(CACHE_BYTES).create(path).map_err(io)?;
        // Create the tables once, so read transactions never meet a missing table.
        let txn = db.begin_write().map_err(io)?;
        {
            txn.open_table(KV).map_err(io)?;
            txn.open_table(META).map_err(io)?;
        }
        txn.commit().map_err(io)?;
        let db = Arc::new(db);
        let (writer, queue) = mpsc::channel();
        let (changes, _) = broadcast::channel(4096);
        let thread_db = db.clone();
        let thread_changes = changes.clone();
        let writer_thread = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || write_loop(&thread_db, &queue, &thread_changes))
            .map_err(io)?;
        Ok(Self { db, writer: Some(writer), writer_thread: Some(writer_thread), changes })
    }

    fn read_entry(value: &[u8], key: &str) -> Result<(Revision, Vec<u8>), StoreError> {
        if value.len() < 8 {
            return Err(StoreError::Corrupt(format!("entry {key} is truncated")));
        }
        let (rev, rest) = value.split_at(8);
        Ok((u64::from_be_bytes(rev.try_into().expect("8 bytes")), rest.to_vec()))
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(KV).map_err(io)?;
        let Some(guard) = table.get(key).map_err(io)? else { return Ok(None) };
        let (mod_revision, value) = Self::read_entry(guard.value(), key)?;
        Ok(Some(Entry { key: key.to_string(), value, mod_revision }))
    }

    async fn range(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let revision = txn.open_table(META).map_err(io)?.get(REVISION_KEY).map_err(io)?.map_or(0, |g| g.value());
        let table = txn.open_table(KV).map_err(io)?;
        let mut entries = Vec::new();
        for item in table.range(prefix..).map_err(io)? {
            let (key, value) = item.map_err(io)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if key.starts_with(UNWATCHED) && !prefix.starts_with(UNWATCHED) {
                continue;
            }
            let (mod_revision, value) = Self::read_entry(value.value(), key)?;
            entries.push(Entry { key: key.to_string(), value, mod_revision });
        }
        Ok(Snapshot { entries, revision })
    }

    async fn range_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(KV).map_err(io)?;
        let start = after.map_or_else(|| prefix.to_string(), |a| format!("{a}\0"));
        let mut entries = Vec::new();
        for item in table.range(start.as_str()..).map_err(io)? {
            let (key, value) = item.map_err(io)?;
            let key = key.value();
            if !key.starts_with(prefix) || entries.len() >= limit {
                break;
            }
            if key.starts_with(UNWATCHED) && !prefix.starts_with(UNWATCHED) {
                continue;
            }
            let (mod_revision, value) = Self::read_entry(value.value(), key)?;
            entries.push(Entry { key: key.to_string(), value, mod_revision });
        }
        Ok(entries)
    }

    async fn commit(&self, txn: Txn) -> Result<Revision, StoreError> {
        let (reply, answer) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or(StoreError::Closed)?;
        writer.send((txn, reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

/// The writer thread: takes one transaction, folds in whatever else is queued, commits once.
fn write_loop(db: &Database, queue: &mpsc::Receiver<(Txn, Reply)>, changes: &broadcast::Sender<Change>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        match commit_batch(db, &batch) {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
                    let outcome = outcome.map(|(revision, ops)| {
                        let ops: Vec<Op> = ops.into_iter().filter(|op| !op.key().starts_with(UNWATCHED)).collect();
                        if !ops.is_empty() {
                            // No receivers is fine: nobody watches yet.
                            let _ = changes.send(Change { revision, ops });
                        }
                        revision
                    });
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(StoreError::Io(e.to_string())));
                }
            }
        }
    }
}

/// What one transaction of a batch came to: its revision and what watchers are told (prefix
/// deletes spelled out key by key), or why it was skipped.
type Outcome = Result<(Revision, Vec<Op>), StoreError>;

/// Applies each transaction of the batch in order inside one redb write transaction. A
/// transaction whose checks fail is skipped (Conflict) without affecting the others.
fn commit_batch(db: &Database, batch: &[(Txn, Reply)]) -> Result<Vec<Outcome>, StoreError> {
    let write = db.begin_write().map_err(io)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut meta = write.open_table(META).map_err(io)?;
        let mut kv = write.open_table(KV).map_err(io)?;
        let mut revision = meta.get(REVISION_KEY).map_err(io)?.map_or(0, |g| g.value());
        for (txn, _) in batch {
            if let Some(key) = first_failed_check(&kv, txn)? {
                outcomes.push(Err(StoreError::Conflict { key }));
                continue;
            }
            revision += 1;
            let mut seen = Vec::with_capacity(txn.ops.len());
            for op in &txn.ops {
                match op {
                    Op::Put { key, value } => {
                        let mut stored = Vec::with_capacity(8 + value.len());
                        stored.extend_from_slice(&revision.to_be_bytes());
                        stored.extend_from_slice(value);
                        kv.insert(key.as_str(), stored.as_slice()).map_err(io)?;
                        seen.push(op.clone());
                    }
                    Op::Delete { key } => {
                        kv.remove(key.as_str()).map_err(io)?;
                        seen.push(op.clone());
                    }
                    Op::DeletePrefix { prefix } => {
                        let mut keys = Vec::new();
                        for item in kv.range(prefix.as_str()..).map_err(io)? {
                            let key = item.map_err(io)?.0.value().to_string();
                            if !key.starts_with(prefix.as_str()) {
                                break;
                            }
                            keys.push(key);
                        }
                        for key in keys {
                            kv.remove(key.as_str()).map_err(io)?;
                            seen.push(Op::Delete { key });
                        }
                    }
                }
            }
            outcomes.push(Ok((revision, seen)));
        }
        meta.insert(REVISION_KEY, revision).map_err(io)?;
    }
    write.commit().map_err(io)?;
    Ok(outcomes)
}

fn first_failed_check(kv: &redb::Table<&str, &[u8]>, txn: &Txn) -> Result<Option<String>, StoreError> {
    for (key, expect) in &txn.checks {
        let current = match kv.get(key.as_str()).map_err(io)? {
            Some(guard) => Some(RedbStore::read_entry(guard.value(), key)?.0),
            None => None,
        };
        let holds = match expect {
            Expect::Absent => current.is_none(),
            Expect::At(revision) => current == Some(*revision),
        };
        if !holds {
            return Ok(Some(key.clone()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn revisions_increase_and_entries_remember_theirs() {
        let (_dir, store) = store();
        let r1 = store.commit(Txn::new().put("a", b"1".to_vec())).await.unwrap();
        let r2 = store.commit(Txn::new().put("b", b"2".to_vec())).await.unwrap();
        assert!(r2 > r1);
        assert_eq!(store.get("a").await.unwrap().unwrap().mod_revision, r1);
        assert_eq!(store.range("").await.unwrap().revision, r2);
    }

    #[tokio::test]
    async fn failed_check_writes_nothing() {
        let (_dir, store) = store();
        let r1 = store.commit(Txn::new().put("a", b"1".to_vec())).await.unwrap();
        let err = store
            .commit(Txn::new().check("a", Expect::Absent).put("a", b"2".to_vec()).put("b", b"x".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { key } if key == "a"));
        assert_eq!(store.get("a").await.unwrap().unwrap().value, b"1");
        assert!(store.get("b").await.unwrap().is_none());
        // Compare-and-swap on the revision read.
        store.commit(Txn::new().check("a", Expect::At(r1)).put("a", b"3".to_vec())).await.unwrap();
        assert!(store.commit(Txn::new().check("a", Expect::At(r1)).delete("a")).await.is_err());
    }

    #[tokio::test]
    async fn range_is_prefix_bounded_and_ordered() {
        let (_dir, store) = store();
        for key in ["p/b", "p/a", "q/a", "p"] {
            store.commit(Txn::new().put(key, vec![1])).await.unwrap();
        }
        let keys: Vec<_> = store.range("p/").await.unwrap().entries.into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["p/a", "p/b"]);
    }

    #[tokio::test]
    async fn concurrent_commits_are_batched_but_isolated() {
        let (_dir, store) = store();
        let store = Arc::new(store);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            // Half of them race for the same key: exactly one may win.
            let key = if i % 2 == 0 { format!("k{i}") } else { "contended".to_string() };
            tasks.push(tokio::spawn(async move {
                store.commit(Txn::new().check(key.clone(), Expect::Absent).put(key, vec![1])).await
            }));
        }
        let mut ok = 0;
        for task in tasks {
            ok += usize::from(task.await.unwrap().is_ok());
        }
        assert_eq!(ok, 101);
        assert_eq!(store.range("").await.unwrap().entries.len(), 101);
    }

    #[tokio::test]
    async fn watchers_see_committed_changes_in_order() {
        let (_dir, store) = store();
        let mut changes = store.subscribe();
        let r1 = store.commit(Txn::new().put("a", vec![1])).await.unwrap();
        let r2 = store.commit(Txn::new().delete("a")).await.unwrap();
        assert_eq!(changes.recv().await.unwrap().revision, r1);
        let second = changes.recv().await.unwrap();
        assert_eq!(second.revision, r2);
        assert_eq!(second.ops, vec![Op::Delete { key: "a".into() }]);
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let revision = {
            let store = RedbStore::open(&path).unwrap();
            store.commit(Txn::new().put("a", b"kept".to_vec())).await.unwrap()
        };
        // Dropping the store closes the file at once.
        let store = RedbStore::open(&path).unwrap();
        let entry = store.get("a").await.unwrap().unwrap();
        assert_eq!((entry.value.as_slice(), entry.mod_revision), (b"kept".as_slice(), revision));
    }
}
