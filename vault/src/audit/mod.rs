//! The audit log: append-only JSON lines under `DATA_DIR/audit/`, hash-chained across files.
//!
//! One writer thread owns the files. Callers hand it entries and may wait until theirs is on
//! disk; the writer folds whatever is queued into one write and one fsync (as the store does),
//! then records the chain's head in the store and tells followers (`hush audit --follow`).

pub mod chain;
pub mod entry;
pub mod query;

use crate::crypto::sha256_hex;
use crate::store::{Store, Txn};
use chain::{GENESIS, Head};
pub use entry::AuditEntry;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use tokio::sync::{broadcast, oneshot};

/// Store key of the chain's head.
pub const HEAD_KEY: &str = "audit/head";
/// A log file is closed and a new one started past this size (the chain continues).
const DEFAULT_FILE_BYTES: u64 = 8 * 1024 * 1024;
const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("audit log {0}: the last entry is unreadable")]
    Corrupt(String),
}

type Done = Option<oneshot::Sender<()>>;

pub struct AuditLog {
    dir: PathBuf,
    queue: mpsc::Sender<(AuditEntry, Done)>,
    lines: broadcast::Sender<String>,
    store: Arc<dyn Store>,
}

struct Writer {
    dir: PathBuf,
    file: Option<File>,
    file_bytes: u64,
    max_file_bytes: u64,
    seq: u64,
    prev: String,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |error| AuditError::Io { path: path.display().to_string(), error }
}

impl AuditLog {
    /// Opens the log in `dir`, continuing the chain where the last file ends.
    pub fn open(dir: &Path, store: Arc<dyn Store>) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let files = chain::log_files(dir).map_err(io_error(dir))?;
        let (seq, prev, file_bytes) = match files.last() {
            None => (0, GENESIS.to_string(), 0),
            Some(last) => recover_tail(last)?,
        };
        let file = match files.last() {
            Some(last) => Some(OpenOptions::new().append(true).open(last).map_err(io_error(last))?),
            None => None,
        };
        let max_file_bytes =
            std::env::var("HUSH_AUDIT_FILE_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_FILE_BYTES);
        let mut writer = Writer { dir: dir.to_path_buf(), file, file_bytes, max_file_bytes, seq, prev };
        let (queue, receiver) = mpsc::channel::<(AuditEntry, Done)>();
        let (lines, _) = broadcast::channel(8192);
        let (thread_lines, thread_store) = (lines.clone(), store.clone());
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Ok(first) = receiver.recv() {
                    let mut batch = vec![first];
                    batch.extend(receiver.try_iter().take(MAX_BATCH));
                    writer.write_batch(batch, &thread_lines, thread_store.as_ref());
                }
            })
            .map_err(io_error(dir))?;
        Ok(Self { dir: dir.to_path_buf(), queue, lines, store })
    }

    /// Appends `entry` (its fields capped: [`AuditEntry::bounded`]); resolves once it is on disk.
    pub async fn record(&self, entry: AuditEntry) {
        let (done, written) = oneshot::channel();
        if self.queue.send((entry.bounded(), Some(done))).is_ok() {
            let _ = written.await;
        }
    }

    /// Appends entries in order; resolves once all are on disk.
    pub async fn record_all(&self, entries: Vec<AuditEntry>) {
        let count = entries.len();
        let mut last = None;
        for (i, entry) in entries.into_iter().enumerate() {
            let (done, written) = oneshot::channel();
            let _ = self.queue.send((entry.bounded(), Some(done)));
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

    /// Checks the chain end to end against the recorded head.
    pub async fn verify(&self) -> Result<chain::Verified, String> {
        let head = match self.store.get(HEAD_KEY).await {
            Ok(Some(entry)) => serde_json::from_slice::<Head>(&entry.value).ok(),
            Ok(None) => None,
            Err(e) => return Err(format!("cannot read the chain head: {e}")),
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || chain::verify(&dir, head.as_ref())).await.map_err(|e| e.to_string())?
    }
}

/// Where the chain stands at the end of `path`. A line cut short by a crash (never fsynced, so
/// never acknowledged and not in the recorded head) is removed, so the log continues cleanly.
fn recover_tail(path: &Path) -> Result<(u64, String, u64), AuditError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    // Entries are written whole, newline last: only bytes after the last newline can be torn.
    // A complete line that does not parse is not ours to remove: opening fails instead.
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let last = text[..complete].lines().last();
    if complete < text.len() {
        tracing::warn!(path = %path.display(), bytes = text.len() - complete, "audit log: removing a partial last entry left by a crash");
        let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
        file.set_len(complete as u64).map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))?;
    }
    match last {
        None => Ok((0, GENESIS.to_string(), 0)),
        Some(line) => {
            let entry: AuditEntry =
                serde_json::from_str(line).map_err(|_| AuditError::Corrupt(path.display().to_string()))?;
            Ok((entry.seq, sha256_hex(line.as_bytes()), complete as u64))
        }
    }
}

impl Writer {
    fn write_batch(&mut self, batch: Vec<(AuditEntry, Done)>, lines: &broadcast::Sender<String>, store: &dyn Store) {
        let mut written = Vec::with_capacity(batch.len());
        let mut buffer = String::new();
        let mut waiters = Vec::with_capacity(batch.len());
        for (mut entry, done) in batch {
            let needs_file = self.file.is_none() || self.file_bytes >= self.max_file_bytes;
            if needs_file && let Err(e) = self.flush(&mut buffer).and_then(|()| self.start_file()) {
                tracing::error!(error = %e, "audit log: cannot start a new file");
            }
            self.seq += 1;
            entry.seq = self.seq;
            entry.prev = std::mem::take(&mut self.prev);
            let line = serde_json::to_string(&entry).expect("entries serialise");
            self.prev = sha256_hex(line.as_bytes());
            self.file_bytes += line.len() as u64 + 1;
            buffer.push_str(&line);
            buffer.push('\n');
            written.push(line);
            waiters.extend(done);
        }
        if let Err(e) = self.flush(&mut buffer) {
            tracing::error!(error = %e, "audit log: write failed");
        }
        let head = Head { seq: self.seq, hash: self.prev.clone() };
        let commit = store.commit(Txn::new().put(HEAD_KEY, serde_json::to_vec(&head).expect("head serialises")));
        if let Err(e) = futures::executor::block_on(commit) {
            tracing::error!(error = %e, "audit log: cannot record the chain head");
        }
        for line in written {
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
        let path = self.dir.join(chain::file_name(self.seq + 1));
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

    async fn log() -> (tempfile::TempDir, Arc<RedbStore>, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let log = AuditLog::open(&dir.path().join("audit"), store.clone()).unwrap();
        (dir, store, log)
    }

    #[tokio::test]
    async fn entries_chain_and_verify() {
        let (_dir, _store, log) = log().await;
        for i in 0..10 {
            log.record(AuditEntry::now("create").actor(format!("admin:{i}"))).await;
        }
        let lines = log.read_lines().unwrap();
        assert_eq!(lines.len(), 10);
        let second: AuditEntry = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second.seq, 2);
        assert_eq!(second.prev, sha256_hex(lines[0].as_bytes()));
        assert_eq!(log.verify().await.unwrap().entries, 10);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<RedbStore> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let audit_dir = dir.path().join("audit");
        {
            let log = AuditLog::open(&audit_dir, store.clone()).unwrap();
            log.record(AuditEntry::now("create")).await;
        }
        let file = chain::log_files(&audit_dir).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"{\"seq\":2,\"time\":\"2026-").unwrap();
        drop(f);
        let log = AuditLog::open(&audit_dir, store.clone()).unwrap();
        log.record(AuditEntry::now("rm")).await;
        assert_eq!(log.verify().await.unwrap().entries, 2);
    }

    #[tokio::test]
    async fn the_chain_continues_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<RedbStore> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let audit_dir = dir.path().join("audit");
        {
            let log = AuditLog::open(&audit_dir, store.clone()).unwrap();
            log.record(AuditEntry::now("create")).await;
        }
        let log = AuditLog::open(&audit_dir, store.clone()).unwrap();
        log.record(AuditEntry::now("rm")).await;
        assert_eq!(log.verify().await.unwrap().entries, 2);
    }
}
