//! Replicas on etcd: every replica's chain kept in the store, so any replica can read, merge
//! and verify them all.
//!
//! A replica's writer appends each batch of lines (after they are on its local disk) as one
//! *segment* at `logs/audit/<replica id>/<first seq, 20 digits>`, in one transaction with its
//! head (`audit/head/<replica id>`), compare-and-swap on the head's revision: the chain in the
//! store is always whole up to its head, and a second process writing the same chain is refused.
//! Segments are create-only and never rewritten. They live under [`crate::store::UNWATCHED`]:
//! no replica's watch carries them.
//!
//! Cross-links: every [`CHECKPOINT_EVERY`] each replica appends a `checkpoint` entry recording
//! where the other chains stood ([`ChainMark`]: sequence number, MAC, segment). `verify` checks
//! that each recorded mark is still in its chain, so removing or cutting one replica's chain,
//! head included, is detected by the others.
//!
//! Queries merge the chains: one cursor per chain reads a few segments at a time, and a k-way
//! merge by time hands out lines; `--follow` then reads the segments a head change announces.

use super::chain::{self, Head, StoredHead, VerifyError, Walk};
use super::entry::{AuditEntry, ChainMark};
use super::query::Query;
use crate::crypto::Key;
use crate::store::{Entry, Expect, Revision, Store, StoreError, Txn};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Prefix of every chain's segments in the store.
pub const SEGMENTS: &str = "logs/audit/";
/// Prefix of the replicas' chain heads.
pub const HEADS: &str = "audit/head/";
/// A segment is cut past this many bytes of lines (etcd takes requests up to 1.5 MiB).
const SEGMENT_BYTES: usize = 256 * 1024;
/// Segments a cursor reads at a time: a query holds at most this many per chain.
const PAGE: usize = 4;
/// How often a replica records the other chains' heads (`HUSH_AUDIT_CHECKPOINT_MS` changes it).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);
pub const CHECKPOINT_OP: &str = "checkpoint";
/// How a checkpoint's line reads (a field's value has its quotes escaped, so cannot match).
const CHECKPOINT_MARKER: &str = "\"op\":\"checkpoint\"";

/// [`CHECKPOINT_EVERY`], or `HUSH_AUDIT_CHECKPOINT_MS` when set (tests).
pub fn checkpoint_interval() -> Duration {
    std::env::var("HUSH_AUDIT_CHECKPOINT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(CHECKPOINT_EVERY, Duration::from_millis)
}

pub fn segment_prefix(replica: &str) -> String {
    format!("{SEGMENTS}{replica}/")
}

pub fn segment_key(replica: &str, first_seq: u64) -> String {
    format!("{SEGMENTS}{replica}/{first_seq:020}")
}

fn first_seq_of(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.parse().ok()
}

/// Where the writer's chain stands in the store.
pub struct StoreChain {
    pub replica: String,
    head_key: String,
    /// The head's revision: the next append compares-and-swaps on it (`None`: no head yet).
    head_revision: Option<Revision>,
    /// Lines on the local disk that are not in the store yet: `(seq, line)`.
    backlog: Vec<(u64, String)>,
    /// The last entry that is not a checkpoint.
    activity: u64,
}

impl StoreChain {
    /// Reads where the chain stands in the store. `local` are the lines the local log holds
    /// past the stored head (written just before a crash): they go with the next append.
    pub fn open(store: &dyn Store, replica: &str, head_key: &str) -> Result<(Self, u64), StoreError> {
        let entry = futures::executor::block_on(store.get(head_key))?;
        let (seq, activity) = match entry.as_ref().map(|e| StoredHead::parse(Some(&e.value))) {
            Some(StoredHead::Keyed(head)) => (head.seq, head.activity.unwrap_or(head.seq)),
            _ => (0, 0),
        };
        let chain = Self {
            replica: replica.to_string(),
            head_key: head_key.to_string(),
            head_revision: entry.map(|e| e.mod_revision),
            backlog: Vec::new(),
            activity,
        };
        Ok((chain, seq))
    }

    pub fn add_backlog(&mut self, lines: Vec<(u64, String)>) {
        self.backlog.extend(lines);
    }

    /// Appends the backlog and `lines` (each `(seq, line, mac)`, in order) in segments; keeps
    /// trying while the store fails, so no caller is answered before its entry is in the
    /// store (fail closed).
    pub fn append(&mut self, store: &dyn Store, key: &Key, lines: &[(u64, String, String)]) {
        let backlog = std::mem::take(&mut self.backlog);
        let mut pending: Vec<(u64, &str, Option<&str>)> =
            backlog.iter().map(|(seq, line)| (*seq, line.as_str(), None)).collect();
        pending.extend(lines.iter().map(|(seq, line, mac)| (*seq, line.as_str(), Some(mac.as_str()))));
        let mut start = 0;
        while start < pending.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < pending.len() && (end == start || bytes + pending[end].1.len() < SEGMENT_BYTES) {
                bytes += pending[end].1.len() + 1;
                end += 1;
            }
            let part = &pending[start..end];
            let first = part[0].0;
            let (last_seq, last_line, last_mac) = part[part.len() - 1];
            let mac = match last_mac {
                Some(mac) => mac.to_string(),
                None => chain::open_line(key, last_line).map(|(_, mac)| mac).unwrap_or_default(),
            };
            let mut text = String::with_capacity(bytes);
            for (seq, line, _) in part {
                text.push_str(line);
                text.push('\n');
                if !line.contains(CHECKPOINT_MARKER) {
                    self.activity = *seq;
                }
            }
            let head =
                Head { segment: Some(first), activity: Some(self.activity), ..Head::sealed(key, last_seq, &mac) };
            self.commit_segment(store, first, text.into_bytes(), &head);
            start = end;
        }
    }

    fn commit_segment(&mut self, store: &dyn Store, first: u64, text: Vec<u8>, head: &Head) {
        let head_bytes = serde_json::to_vec(head).expect("heads serialise");
        let segment = segment_key(&self.replica, first);
        let mut pause = Duration::from_millis(50);
        loop {
            let expect = self.head_revision.map_or(Expect::Absent, Expect::At);
            let txn = Txn::new()
                .check(self.head_key.clone(), expect)
                .check(segment.clone(), Expect::Absent)
                .put(segment.clone(), text.clone())
                .put(self.head_key.clone(), head_bytes.clone());
            let error = match futures::executor::block_on(store.commit(txn)) {
                Ok(revision) => {
                    self.head_revision = Some(revision);
                    return;
                }
                Err(e) => e,
            };
            // A commit whose answer was lost may have applied: then the head is ours.
            if let Ok(Some(now)) = futures::executor::block_on(store.get(&self.head_key))
                && now.value == head_bytes
            {
                self.head_revision = Some(now.mod_revision);
                return;
            }
            match &error {
                StoreError::Conflict { .. } => tracing::error!(
                    replica = %self.replica, error = %error,
                    "audit chain: the chain's head in the store was changed by another process (two replicas with one DATA_DIR/replica-id?); audited calls wait"
                ),
                _ => {
                    tracing::error!(replica = %self.replica, error = %error, "audit chain: cannot append to the store; audited calls wait")
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// Every replica's head in the store, by replica id.
async fn heads(store: &dyn Store) -> Result<BTreeMap<String, Entry>, StoreError> {
    let snapshot = store.range(HEADS).await?;
    Ok(snapshot
        .entries
        .into_iter()
        .filter_map(|e| Some((e.key.strip_prefix(HEADS)?.to_string(), e)))
        .filter(|(id, _)| !id.is_empty() && !id.contains('/'))
        .collect())
}

/// A `checkpoint` entry for `own`'s chain: where every other chain stands now; `None` when
/// no other chain has had an entry but checkpoints since the last one (`activity`), so
/// replicas do not keep recording each other's checkpoints.
pub async fn checkpoint(
    store: &dyn Store,
    key: &Key,
    own: &str,
    activity: &mut BTreeMap<String, u64>,
) -> Result<Option<AuditEntry>, StoreError> {
    let mut marks = Vec::new();
    let mut now = BTreeMap::new();
    for (replica, entry) in heads(store).await? {
        if replica == own {
            continue;
        }
        if let StoredHead::Keyed(head) = StoredHead::parse(Some(&entry.value))
            && head.is_authentic(key)
            && let Some(segment) = head.segment
        {
            now.insert(replica.clone(), head.activity.unwrap_or(head.seq));
            marks.push(ChainMark { replica, seq: head.seq, mac: head.last, segment });
        }
    }
    if marks.is_empty() || now == *activity {
        return Ok(None);
    }
    *activity = now;
    Ok(Some(AuditEntry { heads: Some(marks), ..AuditEntry::now(CHECKPOINT_OP) }))
}

/// Every chain, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChains {
    pub entries: u64,
    pub chains: u32,
    /// Checkpoint marks checked against the chains they name.
    pub links: u32,
}

/// The newest mark one chain recorded of another, and the entry that recorded it.
struct Claim {
    mark: ChainMark,
    by: String,
    at: u64,
}

/// Checks every replica's chain (each line's MAC and link, each head) and every newest
/// checkpoint mark against the chain it names. Errors name the replica.
pub async fn verify(store: &dyn Store, key: &Key) -> Result<VerifiedChains, VerifyError> {
    let heads = heads(store).await.map_err(|e| VerifyError::Unreadable(format!("cannot read the chain heads: {e}")))?;
    let mut claims: BTreeMap<(String, String), Claim> = BTreeMap::new();
    let mut lengths: HashMap<String, u64> = HashMap::new();
    let mut entries = 0;
    for (replica, head) in &heads {
        let length = walk_chain(store, key, replica, &StoredHead::parse(Some(&head.value)), &mut claims).await?;
        lengths.insert(replica.clone(), length);
        entries += length;
    }
    let mut chains = heads.len() as u32;
    // A chain named by a checkpoint whose head is gone: walk what is left of it.
    let missing: Vec<String> =
        claims.keys().map(|(_, target)| target.clone()).filter(|t| !lengths.contains_key(t)).collect();
    for replica in missing {
        if lengths.contains_key(&replica) {
            continue;
        }
        let claim = claims.iter().find(|((_, t), _)| *t == replica).map(|(_, c)| c).expect("listed above");
        let any = store
            .range_page(&segment_prefix(&replica), None, 1)
            .await
            .map_err(|e| VerifyError::Unreadable(e.to_string()))?;
        if any.is_empty() {
            return Err(format!(
                "replica {replica}: its chain is gone (no head, no entries), but replica {}'s checkpoint (entry {}) recorded it at entry {}",
                claim.by, claim.at, claim.mark.seq
            ).into());
        }
        let mut more = BTreeMap::new();
        let length = walk_chain(store, key, &replica, &StoredHead::None, &mut more).await?;
        lengths.insert(replica, length);
        chains += 1;
    }
    for ((_, target), claim) in &claims {
        let length = lengths[target];
        let mark = &claim.mark;
        let by = format!("replica {}'s checkpoint (entry {})", claim.by, claim.at);
        if length < mark.seq {
            return Err(format!(
                "replica {target}: its chain ends at entry {length} but {by} recorded entry {}: entries were removed from the end",
                mark.seq
            ).into());
        }
        let segment = store
            .get(&segment_key(target, mark.segment))
            .await
            .map_err(|e| VerifyError::Unreadable(format!("cannot read replica {target}'s chain: {e}")))?;
        let found = segment.and_then(|s| {
            String::from_utf8(s.value).ok()?.lines().find_map(|line| {
                let (entry, mac) = chain::open_line(key, line).ok()?;
                (entry.seq == mark.seq).then_some(mac)
            })
        });
        if found.as_deref() != Some(mark.mac.as_str()) {
            return Err(format!("replica {target}: entry {} is not the entry {by} recorded", mark.seq).into());
        }
    }
    Ok(VerifiedChains { entries, chains, links: claims.len() as u32 })
}

/// Walks one chain's segments in order; returns its length and keeps the newest mark each
/// of its checkpoints recorded of every other chain.
async fn walk_chain(
    store: &dyn Store,
    key: &Key,
    replica: &str,
    head: &StoredHead,
    claims: &mut BTreeMap<(String, String), Claim>,
) -> Result<u64, VerifyError> {
    let prefix = segment_prefix(replica);
    let named = |problem: String| format!("replica {replica}: {problem}");
    let mut walk = Walk::new(key);
    let mut after: Option<String> = None;
    loop {
        let page = store
            .range_page(&prefix, after.as_deref(), PAGE)
            .await
            .map_err(|e| VerifyError::Unreadable(named(format!("cannot read the chain: {e}"))))?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        for segment in page {
            let first = first_seq_of(&segment.key);
            let text = String::from_utf8(segment.value).map_err(|_| named(format!("{} is not text", segment.key)))?;
            if first != Some(walk.entries() + 1) {
                return Err(named(format!(
                    "segment {} does not start at entry {} (entries removed, inserted or reordered)",
                    segment.key,
                    walk.entries() + 1
                ))
                .into());
            }
            if !text.ends_with('\n') {
                return Err(named(format!("segment {}: the last line is cut short", segment.key)).into());
            }
            for line in text.lines() {
                let (entry, _) = walk.step(line, &format!("segment {}", segment.key)).map_err(named)?;
                if entry.op == CHECKPOINT_OP {
                    for mark in entry.heads.unwrap_or_default() {
                        let slot = (replica.to_string(), mark.replica.clone());
                        if claims.get(&slot).is_none_or(|c| c.mark.seq <= mark.seq) {
                            claims.insert(slot, Claim { mark, by: replica.to_string(), at: entry.seq });
                        }
                    }
                }
            }
        }
    }
    walk.finish(head).map_err(named)?;
    Ok(walk.entries())
}

/// Why a merged query stopped early.
#[derive(Debug)]
pub enum QueryEnd {
    Store(String),
    /// A follower fell this far behind the store's changes.
    Lagged(u64),
}

/// One chain, read a few segments at a time.
struct Cursor {
    replica: String,
    /// The last segment read.
    after: Option<String>,
    lines: VecDeque<String>,
    done: bool,
}

impl Cursor {
    fn new(replica: String) -> Self {
        Self { replica, after: None, lines: VecDeque::new(), done: false }
    }

    /// The next line, reading the next segments when those read are used up.
    async fn next(&mut self, store: &dyn Store) -> Result<Option<String>, StoreError> {
        while self.lines.is_empty() && !self.done {
            let page = store.range_page(&segment_prefix(&self.replica), self.after.as_deref(), PAGE).await?;
            self.done = page.len() < PAGE;
            for segment in page {
                self.after = Some(segment.key);
                self.lines.extend(String::from_utf8_lossy(&segment.value).lines().map(str::to_string));
            }
        }
        Ok(self.lines.pop_front())
    }

    /// Reads again from where it stopped (new segments may have been written).
    fn rewind(&mut self) {
        self.done = false;
    }
}

#[derive(serde::Deserialize)]
struct Stamp {
    #[serde(default)]
    time: String,
}

fn time_of(line: &str) -> String {
    serde_json::from_str::<Stamp>(line).map(|s| s.time).unwrap_or_default()
}

/// The lines of every chain that `query` wants, merged by time (each chain's own order kept);
/// with `follow`, then every new line of any chain as its head moves.
pub fn query(
    store: Arc<dyn Store>,
    query: Query,
    follow: bool,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> tokio::sync::mpsc::Receiver<Result<String, QueryEnd>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    // Subscribe before reading, so no head moved in between is missed.
    let mut changes = follow.then(|| store.subscribe());
    tokio::spawn(async move {
        let wanted = |line: &str| serde_json::from_str::<AuditEntry>(line).is_ok_and(|e| query.matches(&e));
        let fail = |e: StoreError| Err(QueryEnd::Store(e.to_string()));
        let replicas = match heads(store.as_ref()).await {
            Ok(heads) => heads.into_keys().collect::<Vec<_>>(),
            Err(e) => return drop(tx.send(fail(e)).await),
        };
        let mut cursors: Vec<Cursor> = replicas.into_iter().map(Cursor::new).collect();
        // The k-way merge: the earliest unsent line of each chain.
        let mut heap = BinaryHeap::new();
        for (i, cursor) in cursors.iter_mut().enumerate() {
            match cursor.next(store.as_ref()).await {
                Ok(Some(line)) => heap.push(Reverse((time_of(&line), i, line))),
                Ok(None) => {}
                Err(e) => return drop(tx.send(fail(e)).await),
            }
        }
        while let Some(Reverse((_, i, line))) = heap.pop() {
            if wanted(&line) && tx.send(Ok(line)).await.is_err() {
                return;
            }
            match cursors[i].next(store.as_ref()).await {
                Ok(Some(line)) => heap.push(Reverse((time_of(&line), i, line))),
                Ok(None) => {}
                Err(e) => return drop(tx.send(fail(e)).await),
            }
        }
        let Some(changes) = changes.as_mut() else { return };
        loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = tx.closed() => return,
                _ = stopping.changed() => return,
            };
            let change = match change {
                Ok(change) => change,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    return drop(tx.send(Err(QueryEnd::Lagged(n))).await);
                }
                Err(_) => return,
            };
            for op in change.ops {
                let Some(replica) = op.key().strip_prefix(HEADS) else { continue };
                let i = match cursors.iter().position(|c| c.replica == replica) {
                    Some(i) => i,
                    None => {
                        cursors.push(Cursor::new(replica.to_string()));
                        cursors.len() - 1
                    }
                };
                cursors[i].rewind();
                loop {
                    match cursors[i].next(store.as_ref()).await {
                        Ok(Some(line)) => {
                            if wanted(&line) && tx.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return drop(tx.send(fail(e)).await),
                    }
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use crate::store::redb::RedbStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chains_merge_by_time_and_checkpoints_catch_a_removed_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let data_key = Key::random();
        let a = AuditLog::open_replica(&dir.path().join("a"), store.clone(), Some(&data_key), "ra").unwrap();
        let b = AuditLog::open_replica(&dir.path().join("b"), store.clone(), Some(&data_key), "rb").unwrap();
        a.record(AuditEntry::now("create")).await;
        b.record(AuditEntry::now("rotate")).await;
        a.record(AuditEntry::now("rm")).await;

        let key = chain::audit_key(&data_key);
        let mut seen = BTreeMap::new();
        let entry = checkpoint(store.as_ref(), &key, "ra", &mut seen).await.unwrap().expect("b moved");
        assert_eq!(entry.heads.as_ref().unwrap()[0].replica, "rb");
        a.record(entry).await;
        assert!(checkpoint(store.as_ref(), &key, "ra", &mut seen).await.unwrap().is_none(), "nothing moved");

        let verified = verify(store.as_ref(), &key).await.unwrap();
        assert_eq!(verified, VerifiedChains { entries: 4, chains: 2, links: 1 });
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let mut lines = query(store.clone(), Query::default(), false, stopping);
        let mut merged = Vec::new();
        while let Some(line) = lines.recv().await {
            let entry: AuditEntry = serde_json::from_str(&line.unwrap()).unwrap();
            merged.push((entry.op, entry.replica.unwrap()));
        }
        let ops: Vec<(&str, &str)> = merged.iter().map(|(o, r)| (o.as_str(), r.as_str())).collect();
        assert_eq!(ops, [("create", "ra"), ("rotate", "rb"), ("rm", "ra"), ("checkpoint", "ra")]);

        // b's chain removed, head and all: a's checkpoint tells.
        store.commit(Txn::new().delete(format!("{HEADS}rb")).delete(segment_key("rb", 1))).await.unwrap();
        let VerifyError::Tampered(err) = verify(store.as_ref(), &key).await.unwrap_err() else {
            panic!("a removed chain is tampering");
        };
        assert!(err.starts_with("replica rb: its chain is gone"), "{err}");
    }
}
