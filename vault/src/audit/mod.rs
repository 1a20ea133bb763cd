//! The audit log: append-only JSON lines under `DATA_DIR/audit/`, on a keyed chain across files
//! (chain.rs).
//!
//! One writer thread owns the files. Callers hand it entries and may wait until theirs is on
//! disk; the writer folds whatever is queued into one write and one fsync (as the store does),
//! then records the chain's head in the store and tells followers (`hush audit --follow`).
//!
//! When each operation is allowed: the writer extends the chain only once it has the audit key
//! ([`AuditLog::open`] with the data key, or [`AuditLog::unlock`] for an autolocked vault).
//! Until then entries are held in memory (at most [`MAX_HELD`]; the rest are counted in one
//! `dropped` entry) and their callers do not wait.

pub mod chain;
pub mod entry;
pub mod query;
pub mod shared;

use crate::crypto::Key;
use crate::store::{Store, Txn};
pub use chain::VerifyError;
use chain::{DAMAGED_OP, Head, LineError, StoredHead};
pub use entry::AuditEntry;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::{broadcast, oneshot};

/// Store key of the chain's head.
pub const HEAD_KEY: &str = "audit/head";

/// Store key of one replica's chain head when several replicas share a store: each replica
/// keeps its own chain, so they never contend on one head.
pub fn replica_head_key(replica_id: &str) -> String {
    format!("{HEAD_KEY}/{replica_id}")
}
/// A log file is closed and a new one started past this size (the chain continues).
const DEFAULT_FILE_BYTES: u64 = 8 * 1024 * 1024;
const MAX_BATCH: usize = 4096;
/// Entries kept in memory while the vault is locked.
pub const MAX_HELD: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(
        "audit log {0} was written by an earlier Hush, whose hash chain is not keyed: it can be neither verified nor \
         extended; keep it elsewhere (e.g. `mv {0} {0}.unkeyed`) and start again to begin a keyed log"
    )]
    Unkeyed(String),
    #[error("audit log: the vault is locked, so the chain's key is not available")]
    Locked,
    #[error("audit log: the writer has stopped")]
    Stopped,
}

type Done = Option<oneshot::Sender<()>>;

// Entries are nearly every message: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Entry(AuditEntry, Done),
    /// The audit key: check the log against its head, then start writing.
    Unlock(Key, oneshot::Sender<Result<(), AuditError>>),
}

pub struct AuditLog {
    dir: PathBuf,
    queue: mpsc::Sender<Msg>,
    lines: broadcast::Sender<String>,
    store: Arc<dyn Store>,
    key: Mutex<Option<Key>>,
    head_key: String,
    /// Replicas on etcd: this replica's id; its chain is also kept in the store (shared.rs).
    replica: Option<String>,
}

/// Where the chain stands.
struct Chain {
    key: Key,
    seq: u64,
    prev: String,
}

struct Writer {
    dir: PathBuf,
    file: Option<File>,
    file_bytes: u64,
    max_file_bytes: u64,
    chain: Option<Chain>,
    held: Vec<AuditEntry>,
    held_dropped: u64,
    head_key: String,
    replica: Option<String>,
    /// Replicas on etcd: the chain in the store, set once the key is known.
    shared: Option<shared::StoreChain>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |error| AuditError::Io { path: path.display().to_string(), error }
}

impl AuditLog {
    /// Opens the log in `dir`. With the data key, checks the log against its recorded head and
    /// continues the chain; without it (a locked vault) holds entries until [`Self::unlock`].
    pub fn open(dir: &Path, store: Arc<dyn Store>, data_key: Option<&Key>) -> Result<Self, AuditError> {
        Self::open_with_head(dir, store, data_key, HEAD_KEY.to_string())
    }

    /// [`Self::open`] with the chain's head kept at `head_key` (one per replica).
    pub fn open_with_head(
        dir: &Path,
        store: Arc<dyn Store>,
        data_key: Option<&Key>,
        head_key: String,
    ) -> Result<Self, AuditError> {
        Self::open_inner(dir, store, data_key, head_key, None)
    }

    /// A replica's log on a shared store: its chain is kept in the store as well, under its id,
    /// where every replica reads, merges and verifies all chains (shared.rs).
    pub fn open_replica(
        dir: &Path,
        store: Arc<dyn Store>,
        data_key: Option<&Key>,
        replica: &str,
    ) -> Result<Self, AuditError> {
        Self::open_inner(dir, store, data_key, replica_head_key(replica), Some(replica.to_string()))
    }

    fn open_inner(
        dir: &Path,
        store: Arc<dyn Store>,
        data_key: Option<&Key>,
        head_key: String,
        replica: Option<String>,
    ) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let max_file_bytes =
            std::env::var("HUSH_AUDIT_FILE_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_FILE_BYTES);
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            file: None,
            file_bytes: 0,
            max_file_bytes,
            chain: None,
            held: Vec::new(),
            held_dropped: 0,
            head_key: head_key.clone(),
            replica: replica.clone(),
            shared: None,
        };
        let (queue, receiver) = mpsc::channel::<Msg>();
        let (lines, _) = broadcast::channel(8192);
        let (thread_lines, thread_store) = (lines.clone(), store.clone());
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(&receiver, &thread_lines, thread_store.as_ref()))
            .map_err(io_error(dir))?;
        let log = Self { dir: dir.to_path_buf(), queue, lines, store, key: Mutex::new(None), head_key, replica };
        if let Some(data_key) = data_key {
            futures::executor::block_on(log.unlock(data_key))?;
        }
        Ok(log)
    }

    /// Gives the writer the audit key (derived from `data_key`): it checks the log's tail against
    /// the recorded head and writes what was held while locked.
    pub async fn unlock(&self, data_key: &Key) -> Result<(), AuditError> {
        let key = chain::audit_key(data_key);
        let (reply, answer) = oneshot::channel();
        self.queue.send(Msg::Unlock(key.clone(), reply)).map_err(|_| AuditError::Stopped)?;
        answer.await.map_err(|_| AuditError::Stopped)??;
        *self.key.lock().expect("not poisoned") = Some(key);
        Ok(())
    }

    /// Appends `entry` (its fields capped: [`AuditEntry::bounded`]); resolves once it is on disk
    /// (at once while the vault is locked: see the module's doc).
    pub async fn record(&self, entry: AuditEntry) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Msg::Entry(entry.bounded(), Some(done))).is_ok() {
            let _ = written.await;
        }
    }

    /// Appends entries in order; resolves once all are on disk.
    pub async fn record_all(&self, entries: Vec<AuditEntry>) {
        let count = entries.len();
        let mut last = None;
        for (i, entry) in entries.into_iter().enumerate() {
            let (done, written) = oneshot::channel();
            let _ = self.queue.send(Msg::Entry(entry.bounded(), Some(done)));
            if i + 1 == count {
                last = Some(written);
            }
        }
        if let Some(written) = last {
            let _ = written.await;
        }
    }

    /// New lines as they are written.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.lines.subscribe()
    }

    /// Every stored line, in order.
    pub fn read_lines(&self) -> Result<Vec<String>, AuditError> {
        let mut lines = Vec::new();
        for file in chain::log_files(&self.dir).map_err(io_error(&self.dir))? {
            let text = std::fs::read_to_string(&file).map_err(io_error(&file))?;
            lines.extend(text.lines().map(str::to_string));
        }
        Ok(lines)
    }

    /// Every stored line, in order, read file by file and line by line on a blocking thread:
    /// a query holds at most `buffer` lines in memory, however long the log.
    pub fn stream_lines(&self, buffer: usize) -> tokio::sync::mpsc::Receiver<Result<String, AuditError>> {
        use std::io::BufRead;
        let (tx, rx) = tokio::sync::mpsc::channel(buffer);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let files = match chain::log_files(&dir) {
                Ok(files) => files,
                Err(e) => {
                    let _ = tx.blocking_send(Err(io_error(&dir)(e)));
                    return;
                }
            };
            for file in files {
                let reader = match File::open(&file) {
                    Ok(f) => std::io::BufReader::new(f),
                    Err(e) => {
                        let _ = tx.blocking_send(Err(io_error(&file)(e)));
                        return;
                    }
                };
                for line in reader.lines() {
                    let line = line.map_err(io_error(&file));
                    let failed = line.is_err();
                    if tx.blocking_send(line).is_err() || failed {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// Whether the chains live in the store (replicas on etcd): queries then go through
    /// [`shared::query`] on [`Self::store`].
    pub fn is_shared(&self) -> bool {
        self.replica.is_some()
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Replicas on etcd: records where the other chains stand every `every`, when they moved
    /// (shared.rs), for as long as the log exists.
    pub fn start_checkpoints(self: &Arc<Self>, every: std::time::Duration) {
        let (Some(own), Ok(runtime)) = (self.replica.clone(), tokio::runtime::Handle::try_current()) else { return };
        let log = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut last = std::collections::BTreeMap::new();
            loop {
                tokio::time::sleep(every).await;
                let Some(log) = log.upgrade() else { return };
                let Some(key) = log.key.lock().expect("not poisoned").clone() else { continue };
                match shared::checkpoint(log.store.as_ref(), &key, &own, &mut last).await {
                    Ok(Some(entry)) => log.record(entry).await,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "audit checkpoint: cannot read the other chains' heads"),
                }
            }
        });
    }

    /// Checks the chain end to end (every MAC, every link) against the recorded head; for
    /// replicas on etcd, every replica's chain in the store and the checkpoints linking them.
    pub async fn verify(&self) -> Result<chain::Verified, VerifyError> {
        let key = self
            .key
            .lock()
            .expect("not poisoned")
            .clone()
            .ok_or_else(|| VerifyError::Unreadable(AuditError::Locked.to_string()))?;
        if self.is_shared() {
            let v = shared::verify(self.store.as_ref(), &key).await?;
            return Ok(chain::Verified { entries: v.entries, files: 0, chains: v.chains, links: v.links });
        }
        let head = match self.store.get(&self.head_key).await {
            Ok(entry) => StoredHead::parse(entry.as_ref().map(|e| e.value.as_slice())),
            Err(e) => return Err(VerifyError::Unreadable(format!("cannot read the chain head: {e}"))),
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || chain::verify(&dir, &key, &head))
            .await
            .map_err(|e| VerifyError::Unreadable(e.to_string()))?
    }
}

/// Removes a line cut short by a crash (never fsynced, so never acknowledged) from the end of
/// `path`; returns the file's remaining text.
fn trim_torn_tail(path: &Path) -> Result<String, AuditError> {
    let mut text = std::fs::read_to_string(path).map_err(io_error(path))?;
    // Entries are written whole, newline last: only bytes after the last newline can be torn.
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        tracing::warn!(path = %path.display(), bytes = text.len() - complete, "audit log: removing a partial last entry left by a crash");
        let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
        file.set_len(complete as u64).map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))?;
        text.truncate(complete);
    }
    Ok(text)
}

/// How the writer starts: where the chain stands, the file to append to, and what is wrong
/// with the log if it does not match its head.
struct Start {
    seq: u64,
    prev: String,
    append_to: Option<(PathBuf, u64)>,
    damage: Option<String>,
}

/// Lines with `seq > after`, reading from the end of the log back to the file that holds
/// `after + 1` (a crash leaves at most one batch past the recorded head).
fn lines_after(files: &[PathBuf], after: u64) -> Result<Vec<String>, AuditError> {
    let mut texts = Vec::new();
    for file in files.iter().rev() {
        texts.push(std::fs::read_to_string(file).map_err(io_error(file))?);
        if chain::first_seq(file).is_some_and(|first| first <= after + 1) {
            break;
        }
    }
    Ok(texts.iter().rev().flat_map(|t| t.lines()).map(str::to_string).collect())
}

/// Checks the log's tail against the recorded head. Lines past the head that chain from it
/// and verify are a batch whose head a crash did not record: they are kept.
fn prepare(dir: &Path, store: &dyn Store, head_key: &str, key: &Key) -> Result<Start, AuditError> {
    let files = chain::log_files(dir).map_err(io_error(dir))?;
    let head = futures::executor::block_on(store.get(head_key))
        .map(|entry| StoredHead::parse(entry.as_ref().map(|e| e.value.as_slice())))
        .unwrap_or(StoredHead::Unreadable);
    let fresh = Start { seq: 0, prev: chain::genesis(key), append_to: None, damage: None };
    let authentic = match &head {
        StoredHead::Keyed(h) if h.is_authentic(key) => Some(h.clone()),
        _ => None,
    };
    let Some(last_file) = files.last() else {
        return Ok(match authentic {
            Some(h) if h.seq > 0 => Start {
                seq: h.seq,
                prev: h.last.clone(),
                damage: Some(format!("the log files are gone but entry {} was recorded", h.seq)),
                ..fresh
            },
            _ => fresh,
        });
    };
    let text = trim_torn_tail(last_file)?;
    let append_to = Some((last_file.clone(), text.len() as u64));
    let Some(last) = text.lines().last() else {
        // An empty last file: the chain stands where the head says.
        return Ok(match authentic {
            Some(h) => Start { seq: h.seq, prev: h.last, append_to, damage: None },
            None if files.len() == 1 => Start { append_to, ..fresh },
            None => Start { damage: Some("the recorded chain head is missing or altered".into()), ..fresh },
        });
    };
    let tail = match chain::open_line(key, last) {
        Ok((entry, mac)) => Some((entry.seq, mac)),
        Err(LineError::Unkeyed) if !matches!(head, StoredHead::Keyed(_)) => {
            return Err(AuditError::Unkeyed(dir.display().to_string()));
        }
        Err(_) => None,
    };
    let damaged = |what: String| -> Start {
        // Continue from what can be trusted, in a new file, and say so in the log.
        let (seq, prev) = match (&authentic, &tail) {
            (Some(h), _) => (h.seq, h.last.clone()),
            (None, Some((seq, mac))) => (*seq, mac.clone()),
            (None, None) => (text.lines().count() as u64, chain::genesis(key)),
        };
        Start { seq, prev, append_to: None, damage: Some(what) }
    };
    let name = last_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(h) = authentic.clone() else {
        let what = match head {
            StoredHead::Keyed(_) => "the recorded chain head was altered",
            _ => "no chain head is recorded (it was removed from the store)",
        };
        return Ok(damaged(what.into()));
    };
    let Some((seq, mac)) = tail.clone() else {
        return Ok(damaged(format!("the last entry of {name} does not verify")));
    };
    if seq == h.seq && mac == h.last {
        return Ok(Start { seq, prev: mac, append_to, damage: None });
    }
    if seq < h.seq {
        return Ok(damaged(format!(
            "the log ends at entry {seq} but entry {} was recorded: entries were removed from the end",
            h.seq
        )));
    }
    if seq == h.seq {
        return Ok(damaged(format!("entry {seq} (the last) is not the entry recorded as the last")));
    }
    // Past the head: every line from the head on must verify and chain.
    let mut prev = None::<String>;
    let mut expected = h.seq;
    for line in lines_after(&files, h.seq)? {
        let Ok((entry, line_mac)) = chain::open_line(key, &line) else {
            return Ok(damaged(format!("an entry after the recorded head (entry {}) does not verify", h.seq)));
        };
        if entry.seq < h.seq {
            continue;
        }
        let linked = match &prev {
            None => entry.seq == h.seq && line_mac == h.last,
            Some(prev) => entry.seq == expected + 1 && &entry.prev == prev,
        };
        if !linked {
            return Ok(damaged(format!("the entries after the recorded head (entry {}) do not follow it", h.seq)));
        }
        expected = entry.seq;
        prev = Some(line_mac);
    }
    tracing::info!(from = h.seq + 1, to = seq, "audit log: keeping entries written just before a crash");
    Ok(Start { seq, prev: mac, append_to, damage: None })
}

impl Writer {
    fn run(&mut self, receiver: &mpsc::Receiver<Msg>, lines: &broadcast::Sender<String>, store: &dyn Store) {
        while let Ok(first) = receiver.recv() {
            let mut entries = Vec::new();
            for msg in std::iter::once(first).chain(receiver.try_iter().take(MAX_BATCH)) {
                match msg {
                    Msg::Entry(entry, done) if self.chain.is_some() => entries.push((entry, done)),
                    Msg::Entry(entry, done) => {
                        if self.held.len() < MAX_HELD {
                            self.held.push(entry);
                        } else {
                            self.held_dropped += 1;
                        }
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                    Msg::Unlock(key, reply) => {
                        if self.chain.is_some() {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        let result = prepare(&self.dir, store, &self.head_key, &key)
                            .and_then(|start| self.start(key, start, store));
                        if result.is_ok() {
                            entries.extend(self.take_held().into_iter().map(|e| (e, None)));
                        }
                        let _ = reply.send(result);
                    }
                }
            }
            if !entries.is_empty() {
                self.write_batch(entries, lines, store);
            }
        }
    }

    fn start(&mut self, key: Key, start: Start, store: &dyn Store) -> Result<(), AuditError> {
        if let Some((path, bytes)) = &start.append_to {
            self.file = Some(OpenOptions::new().append(true).open(path).map_err(io_error(path))?);
            self.file_bytes = *bytes;
        }
        if let Some(replica) = &self.replica {
            let store_error = |e: crate::store::StoreError| AuditError::Io {
                path: self.head_key.clone(),
                error: std::io::Error::other(e.to_string()),
            };
            let (mut shared, stored) = shared::StoreChain::open(store, replica, &self.head_key).map_err(store_error)?;
            // Lines a crash left on disk past the store's head go to the store first.
            if start.damage.is_none() && start.seq > stored {
                let files = chain::log_files(&self.dir).map_err(io_error(&self.dir))?;
                let backlog = lines_after(&files, stored)?
                    .into_iter()
                    .filter_map(|line| {
                        let seq = serde_json::from_str::<AuditEntry>(&line).ok()?.seq;
                        (seq > stored).then_some((seq, line))
                    })
                    .collect();
                shared.add_backlog(backlog);
            }
            self.shared = Some(shared);
        }
        self.chain = Some(Chain { key, seq: start.seq, prev: start.prev });
        if let Some(damage) = start.damage {
            tracing::error!(problem = %damage, "audit log: the log does not match its recorded head; continuing in a new file from what verifies (`hush audit verify` reports it)");
            self.file = None;
            self.held.insert(0, AuditEntry { reason: Some(damage), ..AuditEntry::now(DAMAGED_OP) });
        }
        Ok(())
    }

    fn take_held(&mut self) -> Vec<AuditEntry> {
        let mut held = std::mem::take(&mut self.held);
        if self.held_dropped > 0 {
            held.push(AuditEntry {
                count: Some(self.held_dropped),
                reason: Some(format!("entries beyond {MAX_HELD} recorded while the vault was locked")),
                ..AuditEntry::now("dropped")
            });
            self.held_dropped = 0;
        }
        held
    }

    fn write_batch(&mut self, batch: Vec<(AuditEntry, Done)>, lines: &broadcast::Sender<String>, store: &dyn Store) {
        let mut written = Vec::with_capacity(batch.len());
        let mut buffer = String::new();
        let mut waiters = Vec::with_capacity(batch.len());
        for (mut entry, done) in batch {
            let needs_file = self.file.is_none() || self.file_bytes >= self.max_file_bytes;
            if needs_file && let Err(e) = self.flush(&mut buffer).and_then(|()| self.start_file()) {
                tracing::error!(error = %e, "audit log: cannot start a new file");
            }
            let chain = self.chain.as_mut().expect("batches are written only with the key");
            chain.seq += 1;
            entry.seq = chain.seq;
            entry.prev = std::mem::take(&mut chain.prev);
            entry.replica.clone_from(&self.replica);
            let (line, mac) = chain::seal_line(&chain.key, entry);
            chain.prev = mac.clone();
            self.file_bytes += line.len() as u64 + 1;
            buffer.push_str(&line);
            buffer.push('\n');
            written.push((chain.seq, line, mac));
            waiters.extend(done);
        }
        if let Err(e) = self.flush(&mut buffer) {
            tracing::error!(error = %e, "audit log: write failed");
        }
        let chain = self.chain.as_ref().expect("set above");
        if let Some(shared) = self.shared.as_mut() {
            // The lines and the head, in the store before any caller is answered.
            shared.append(store, &chain.key, &written);
        } else {
            let head = Head::sealed(&chain.key, chain.seq, &chain.prev);
            let commit = store
                .commit(Txn::new().put(self.head_key.clone(), serde_json::to_vec(&head).expect("head serialises")));
            if let Err(e) = futures::executor::block_on(commit) {
                tracing::error!(error = %e, "audit log: cannot record the chain head");
            }
        }
        for (_, line, _) in written {
            let _ = lines.send(line);
        }
        for done in waiters {
            let _ = done.send(());
        }
    }

    fn flush(&mut self, buffer: &mut String) -> std::io::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let file = self.file.as_mut().ok_or_else(|| std::io::Error::other("no open log file"))?;
        file.write_all(buffer.as_bytes())?;
        file.sync_data()?;
        buffer.clear();
        Ok(())
    }

    fn start_file(&mut self) -> std::io::Result<()> {
        let seq = self.chain.as_ref().map_or(0, |c| c.seq);
        let path = self.dir.join(chain::file_name(seq + 1));
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = Some(file);
        self.file_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<RedbStore>,
        audit_dir: PathBuf,
        data_key: Key,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
            let audit_dir = dir.path().join("audit");
            Self { _dir: dir, store, audit_dir, data_key: Key::random() }
        }

        fn open(&self) -> AuditLog {
            AuditLog::open(&self.audit_dir, self.store.clone(), Some(&self.data_key)).unwrap()
        }

        fn last_file(&self) -> PathBuf {
            chain::log_files(&self.audit_dir).unwrap().pop().unwrap()
        }
    }

    #[tokio::test]
    async fn entries_chain_and_verify() {
        let fixture = Fixture::new();
        let log = fixture.open();
        for i in 0..10 {
            log.record(AuditEntry::now("create").actor(format!("admin:{i}"))).await;
        }
        let lines = log.read_lines().unwrap();
        assert_eq!(lines.len(), 10);
        let key = chain::audit_key(&fixture.data_key);
        let (first, first_mac) = chain::open_line(&key, &lines[0]).unwrap();
        let (second, _) = chain::open_line(&key, &lines[1]).unwrap();
        assert_eq!((first.seq, first.prev), (1, chain::genesis(&key)));
        assert_eq!((second.seq, second.prev), (2, first_mac));
        assert_eq!(log.verify().await.unwrap().entries, 10);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_dropped_on_open() {
        let fixture = Fixture::new();
        fixture.open().record(AuditEntry::now("create")).await;
        let mut f = OpenOptions::new().append(true).open(fixture.last_file()).unwrap();
        f.write_all(b"{\"seq\":2,\"time\":\"2026-").unwrap();
        drop(f);
        let log = fixture.open();
        log.record(AuditEntry::now("rm")).await;
        assert_eq!(log.verify().await.unwrap().entries, 2);
    }

    #[tokio::test]
    async fn the_chain_continues_after_reopening() {
        let fixture = Fixture::new();
        fixture.open().record(AuditEntry::now("create")).await;
        let log = fixture.open();
        log.record(AuditEntry::now("rm")).await;
        assert_eq!(log.verify().await.unwrap().entries, 2);
    }

    #[tokio::test]
    async fn a_locked_log_holds_entries_until_unlocked_and_counts_the_overflow() {
        let fixture = Fixture::new();
        let log = AuditLog::open(&fixture.audit_dir, fixture.store.clone(), None).unwrap();
        for _ in 0..MAX_HELD + 5 {
            log.record(AuditEntry::denied("admin:a", "unlock: wrong unlock key")).await;
        }
        assert!(log.read_lines().unwrap().is_empty());
        assert_eq!(log.verify().await.unwrap_err(), VerifyError::Unreadable(AuditError::Locked.to_string()));
        log.unlock(&fixture.data_key).await.unwrap();
        log.record(AuditEntry::now("unlock")).await;
        let lines = log.read_lines().unwrap();
        assert_eq!(lines.len(), MAX_HELD + 2);
        assert!(lines[MAX_HELD].contains("\"op\":\"dropped\"") && lines[MAX_HELD].contains("\"count\":5"));
        assert_eq!(log.verify().await.unwrap().entries, MAX_HELD as u64 + 2);
    }

    #[tokio::test]
    async fn another_key_or_an_unkeyed_log_is_refused() {
        let fixture = Fixture::new();
        fixture.open().record(AuditEntry::now("create")).await;
        // Another data key: the last line does not verify; the log goes on, damage recorded.
        let other = AuditLog::open(&fixture.audit_dir, fixture.store.clone(), Some(&Key::random())).unwrap();
        other.record(AuditEntry::now("rm")).await;
        assert!(other.verify().await.unwrap_err().to_string().contains("does not verify"));

        // An earlier Hush's log: unkeyed lines and an unkeyed head.
        let fixture = Fixture::new();
        std::fs::create_dir_all(&fixture.audit_dir).unwrap();
        let line = serde_json::to_string(&AuditEntry { seq: 1, ..AuditEntry::now("create") }).unwrap();
        std::fs::write(fixture.audit_dir.join(chain::file_name(1)), format!("{line}\n")).unwrap();
        let head = br#"{"seq":1,"hash":"00"}"#.to_vec();
        fixture.store.commit(Txn::new().put(HEAD_KEY, head)).await.unwrap();
        let err = AuditLog::open(&fixture.audit_dir, fixture.store.clone(), Some(&fixture.data_key)).err().unwrap();
        assert!(err.to_string().contains("earlier Hush, whose hash chain is not keyed"), "{err}");
    }
}
