//! The HA store: the same contract as the embedded store, kept in an etcd cluster.
//!
//! Every key lives under a prefix (`/hush` by default). A transaction is one etcd txn: each
//! `Expect::Absent` is `create_revision(key) == 0` (create-only), each `Expect::At(r)` is
//! `mod_revision(key) == r` (compare-and-swap on the revision read); when a check fails the
//! txn's else branch reads the checked keys so the conflict can be named. Reads are
//! linearizable, so any replica sees every write acknowledged before the read began.
//!
//! One watch per store feeds [`Store::subscribe`]. It resumes from the revision after the last
//! one delivered when its stream breaks, drops events at or below that revision (etcd 3.4.23 can repeat
//! events), and when its start revision has been compacted it re-lists the prefix and sends the
//! difference from what it last knew as one change (what a subscriber would have seen, folded).
//! Requested progress notifications are never used (racy before 3.4.25).
//!
//! Keys under [`UNWATCHED`] (`logs/...`) live beside the prefix, at `PREFIX.logs/...`, so the
//! watch and its index never carry them.

use super::{Change, Entry, Expect, Op, Revision, Snapshot, Store, StoreError, Txn, UNWATCHED};
use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Identity,
    TlsOptions, TxnOp, TxnOpResponse, WatchOptions,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Default key prefix in etcd.
pub const DEFAULT_PREFIX: &str = "/hush";
/// Keys per page when listing (etcd answers at most ~4 MiB by default; we raise that too).
const PAGE: i64 = 1000;
/// Largest message the client decodes: a page of configs near their 1 MB cap stays under it.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Where the store is: endpoints, key prefix and TLS material, parsed from
/// `etcd://h1:2379,h2:2379[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub tls: Option<EtcdTls>,
}

/// PEM files for TLS to etcd: the CA that signed etcd's certificates, and optionally a client
/// certificate and key (etcd's `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdConfig {
    /// Parses `etcd://h1:2379,h2:2379[/prefix]`.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Config(format!("invalid store URL {url:?}: {why}"));
        let rest =
            url.strip_prefix("etcd://").ok_or_else(|| bad("expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"))?;
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, DEFAULT_PREFIX),
        };
        let prefix = if prefix.is_empty() { DEFAULT_PREFIX } else { prefix };
        let endpoints: Vec<String> = hosts.split(',').map(str::trim).map(str::to_string).collect();
        if endpoints.iter().any(|e| e.is_empty() || !e.contains(':') || e.contains('@')) {
            return Err(bad("every endpoint must be HOST:PORT"));
        }
        if prefix.contains(char::is_whitespace) {
            return Err(bad("the prefix may not contain spaces"));
        }
        Ok(Self { endpoints, prefix: prefix.to_string(), tls: None })
    }

    /// The URL form, without TLS material.
    pub fn url(&self) -> String {
        format!("etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

/// Whether the store's watch is connected; a replica that lost etcd stops taking new streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Connected,
    /// Why etcd cannot be reached (the last error), and since when.
    Lost(String, std::time::Instant),
}

/// A watch broken for less than this is a blip (an etcd leader change), not a lost store.
const GRACE: Duration = Duration::from_secs(1);

pub struct EtcdStore {
    // Fields drop in this order: the health goes before the client, so a watch that sees the
    // client's connections close as the store is dropped (its abort may not have landed yet,
    // on another worker) finds nobody holding the health, and says nothing (see `lost`).
    health: watch::Receiver<Health>,
    watcher: tokio::task::JoinHandle<()>,
    client: Client,
    /// Keys in etcd are `prefix/key`.
    prefix: String,
    runtime: tokio::runtime::Handle,
    changes: broadcast::Sender<Change>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Io(format!("etcd: {e}"))
}

/// How long a call keeps trying other members while the one it reached is down.
const FAILOVER: Duration = Duration::from_secs(4);

/// Whether the request never left this process (no member accepted the connection), so
/// sending it again cannot apply it twice.
fn not_sent(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unavailable && s.message().contains("connect"))
}

/// Whether a read may simply be asked again (the member was down or had no leader, or its
/// connection closed under the call: `Cancelled`).
fn transient(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled))
        || matches!(e, etcd_client::Error::TransportError(_))
        // A connection to a member that just died, broken mid-call (seen as a broken pipe).
        || matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unknown && s.message() == "transport error")
}

/// Runs `call` again while `retry` says its error allows it, for up to [`FAILOVER`]: the
/// balanced channel may pick a member that just died before it learns so.
async fn with_failover<T, F, Fut>(retry: fn(&etcd_client::Error) -> bool, mut call: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + FAILOVER;
    let mut pause = RETRY_MIN;
    loop {
        match call().await {
            Err(e) if retry(&e) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            result => return result,
        }
    }
}

impl EtcdStore {
    /// Connects and starts the watch from the current revision. Fails if no endpoint answers.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let client = connect_client(config).await?;
        let prefix = format!("{}/", config.prefix.trim_end_matches('/'));
        // The revision the watch starts after: nothing committed before `connect` returns is
        // news to a subscriber (as with the embedded store, subscribe first, then range).
        let mut kv = client.kv_client();
        let start = kv
            .get(prefix.as_bytes(), Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .map_err(|e| unreachable(config, &e))?
            .header()
            .map_or(0, |h| h.revision()) as Revision;
        let (changes, _) = broadcast::channel(4096);
        let (health_tx, health) = watch::channel(Health::Connected);
        let watcher = tokio::spawn(watch_loop(client.clone(), prefix.clone(), start, changes.clone(), health_tx));
        Ok(Self { client, prefix, runtime: tokio::runtime::Handle::current(), changes, health, watcher })
    }

    /// The watch's state, for readiness and `hush vault members`.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// A client on the same connection (elections, leases, member status).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs `work` on the runtime the client was made on: the store is also called from plain
    /// threads (the audit writer), where etcd's client cannot run by itself.
    async fn on_runtime<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.runtime.spawn(work).await.map_err(|_| StoreError::Closed)?
    }
}

async fn connect_client(config: &EtcdConfig) -> Result<Client, StoreError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_require_leader(true);
    let scheme = if let Some(tls) = &config.tls {
        let mut tls_options = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            tls_options = tls_options.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls_options);
        "https"
    } else {
        "http"
    };
    let endpoints: Vec<String> = config.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect();
    let connect = Client::connect(endpoints, Some(options));
    let client = tokio::time::timeout(REQUEST_TIMEOUT, connect)
        .await
        .map_err(|_| StoreError::Unreachable(format!("cannot reach etcd at {}: no answer in time", config.url())))?
        .map_err(|e| unreachable(config, &e))?;
    Ok(client)
}

/// Why no member could be reached, in one line: the innermost cause (a refused connection, a
/// certificate that does not verify, a TLS alert) and, for TLS failures, which flag to check.
fn unreachable(config: &EtcdConfig, error: &etcd_client::Error) -> StoreError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match error {
        etcd_client::Error::GRpcStatus(status) => std::error::Error::source(status),
        etcd_client::Error::TransportError(e) => Some(e),
        _ => None,
    };
    let mut root = error.to_string();
    while let Some(e) = cause {
        root = e.to_string();
        cause = e.source();
    }
    let hint = if root.contains("invalid peer certificate") {
        " (etcd's certificate does not verify with --etcd-ca)"
    } else if ["fatal alert", "broken pipe", "connection reset", "connection closed", "eof"]
        .iter()
        .any(|w| root.to_ascii_lowercase().contains(w))
    {
        match &config.tls {
            None => " (etcd closed the connection: if it serves TLS, give --etcd-ca, and --etcd-cert/--etcd-key)",
            Some(EtcdTls { identity: None, .. }) => {
                " (etcd closed the connection: it may require a client certificate, --etcd-cert/--etcd-key)"
            }
            Some(_) => " (etcd refused the client certificate: --etcd-cert must be signed by a CA etcd trusts)",
        }
    } else {
        ""
    };
    StoreError::Unreachable(format!("cannot reach etcd at {}: {root}{hint}", config.url()))
}

/// Where [`UNWATCHED`] keys live: beside the watched prefix, not under it.
const LOGS_SUFFIX: &str = ".logs/";

/// The etcd key of a store key (`prefix` ends with `/`).
fn etcd_key(prefix: &str, key: &str) -> String {
    match key.strip_prefix(UNWATCHED) {
        Some(rest) => format!("{}{LOGS_SUFFIX}{rest}", prefix.trim_end_matches('/')),
        None => format!("{prefix}{key}"),
    }
}

/// One etcd member's own account of itself (`hush vault members`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    pub version: String,
    pub db_size: i64,
    /// It is the raft leader.
    pub leader: bool,
    /// It knows a leader and reports no errors.
    pub healthy: bool,
    pub errors: Vec<String>,
}

/// Asks `endpoint` alone (with `config`'s TLS) for its status, within a second or two.
pub async fn endpoint_status(config: &EtcdConfig, endpoint: &str) -> Result<EndpointStatus, StoreError> {
    let one = EtcdConfig { endpoints: vec![endpoint.to_string()], ..config.clone() };
    let ask = async {
        let client = connect_client(&one).await?;
        let status = client.maintenance_client().status().await.map_err(unavailable)?;
        let member = status.header().map_or(0, |h| h.member_id());
        Ok(EndpointStatus {
            version: status.version().to_string(),
            db_size: status.db_size(),
            leader: member != 0 && status.leader() == member,
            healthy: status.leader() != 0 && status.errors().is_empty(),
            errors: status.errors().to_vec(),
        })
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .unwrap_or_else(|_| Err(StoreError::Io(format!("etcd: no answer from {endpoint} in time"))))
}

fn kv_entry(prefix: &str, kv: &etcd_client::KeyValue) -> Result<Entry, StoreError> {
    let logs = format!("{}{LOGS_SUFFIX}", prefix.trim_end_matches('/'));
    let key = std::str::from_utf8(kv.key())
        .ok()
        .and_then(|k| {
            k.strip_prefix(prefix)
                .map(str::to_string)
                .or_else(|| k.strip_prefix(logs.as_str()).map(|rest| format!("{UNWATCHED}{rest}")))
        })
        .ok_or_else(|| StoreError::Corrupt(format!("etcd key {:?} is outside {prefix}", kv.key())))?;
    Ok(Entry { key, value: kv.value().to_vec(), mod_revision: kv.mod_revision() as Revision })
}

/// At most `limit` keys of `prefix + sub` after `after` (a store key), in key order.
async fn list_page(
    client: &Client,
    prefix: &str,
    sub: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let start = etcd_key(prefix, sub).into_bytes();
    let end = prefix_end(&start);
    let from = match after {
        Some(after) => {
            let mut from = etcd_key(prefix, after).into_bytes();
            from.push(0);
            from.max(start)
        }
        None => start,
    };
    let options = GetOptions::new().with_range(end).with_limit(limit as i64);
    let page = with_failover(transient, || {
        let (mut kv, from, options) = (kv.clone(), from.clone(), options.clone());
        async move { kv.get(from, Some(options)).await }
    })
    .await
    .map_err(unavailable)?;
    page.kvs().iter().map(|item| kv_entry(prefix, item)).collect()
}

/// Lists `prefix + sub` in pages, every page at the revision of the first (a consistent cut).
async fn list(client: &Client, prefix: &str, sub: &str) -> Result<Snapshot, StoreError> {
    let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let start = etcd_key(prefix, sub).into_bytes();
    let end = prefix_end(&start);
    let mut from = start.clone();
    let mut revision = 0i64;
    let mut entries = Vec::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let page = with_failover(transient, || {
            let (mut kv, from, options) = (kv.clone(), from.clone(), options.clone());
            async move { kv.get(from, Some(options)).await }
        })
        .await
        .map_err(unavailable)?;
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        for item in page.kvs() {
            entries.push(kv_entry(prefix, item)?);
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(Snapshot { entries, revision: revision as Revision })
}

/// The smallest key greater than every key starting with `start` (etcd's `--prefix` end).
fn prefix_end(start: &[u8]) -> Vec<u8> {
    let mut end = start.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let kv = self.client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let (full, prefix) = (etcd_key(&self.prefix, key), self.prefix.clone());
        self.on_runtime(async move {
            let response = with_failover(transient, || {
                let (mut kv, full) = (kv.clone(), full.clone());
                async move { kv.get(full, None).await }
            })
            .await
            .map_err(unavailable)?;
            response.kvs().first().map(|item| kv_entry(&prefix, item)).transpose()
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let (client, root, sub) = (self.client.clone(), self.prefix.clone(), prefix.to_string());
        self.on_runtime(async move { list(&client, &root, &sub).await }).await
    }

    async fn range_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let (client, root, sub, after) =
            (self.client.clone(), self.prefix.clone(), prefix.to_string(), after.map(str::to_string));
        self.on_runtime(async move { list_page(&client, &root, &sub, after.as_deref(), limit).await }).await
    }

    async fn commit(&self, txn: Txn) -> Result<Revision, StoreError> {
        let kv = self.client.kv_client();
        let prefix = self.prefix.clone();
        self.on_runtime(async move {
            let full = |key: &str| etcd_key(&prefix, key);
            let compares: Vec<Compare> = txn
                .checks
                .iter()
                .map(|(key, expect)| match expect {
                    Expect::Absent => Compare::create_revision(full(key), CompareOp::Equal, 0),
                    Expect::At(revision) => Compare::mod_revision(full(key), CompareOp::Equal, *revision as i64),
                })
                .collect();
            // etcd refuses a key twice in one txn: the last operation on a key decides its end state.
            let ops: Vec<TxnOp> = txn
                .ops
                .iter()
                .enumerate()
                .filter(|(i, op)| txn.ops[i + 1..].iter().all(|later| later.key() != op.key()))
                .map(|(_, op)| match op {
                    Op::Put { key, value } => TxnOp::put(full(key), value.clone(), None),
                    Op::Delete { key } => TxnOp::delete(full(key), None),
                    Op::DeletePrefix { prefix } => {
                        TxnOp::delete(full(prefix), Some(DeleteOptions::new().with_prefix()))
                    }
                })
                .collect();
            let reads: Vec<TxnOp> = txn.checks.iter().map(|(key, _)| TxnOp::get(full(key), None)).collect();
            let request = etcd_client::Txn::new().when(compares).and_then(ops).or_else(reads);
            let response = with_failover(not_sent, || {
                let (mut kv, request) = (kv.clone(), request.clone());
                async move { kv.txn(request).await }
            })
            .await
            .map_err(|e| match e {
                etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::InvalidArgument => {
                    StoreError::Io(format!("etcd refused the transaction: {}", status.message()))
                }
                e => unavailable(e),
            })?;
            if response.succeeded() {
                return Ok(response.header().map_or(0, |h| h.revision()) as Revision);
            }
            // Name the first check that does not hold, from the else branch's reads.
            for ((key, expect), read) in txn.checks.iter().zip(response.op_responses()) {
                let current = match read {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision() as Revision),
                    _ => None,
                };
                let holds = match expect {
                    Expect::Absent => current.is_none(),
                    Expect::At(revision) => current == Some(*revision),
                };
                if !holds {
                    return Err(StoreError::Conflict { key: key.clone() });
                }
            }
            let key = txn.checks.first().map_or_else(String::new, |(k, _)| k.clone());
            Err(StoreError::Conflict { key })
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn health(&self) -> Result<(), String> {
        match &*self.health.borrow() {
            Health::Lost(why, since) if since.elapsed() >= GRACE => Err(why.clone()),
            _ => Ok(()),
        }
    }
}

/// What the watch knows of the prefix: each key's last revision (no values), to compute what
/// a compaction hid from it.
type Index = Arc<Mutex<BTreeMap<String, Revision>>>;

/// Follows the prefix from `after + 1` for the store's life.
async fn watch_loop(
    client: Client,
    prefix: String,
    after: Revision,
    changes: broadcast::Sender<Change>,
    health: watch::Sender<Health>,
) {
    let mut last = after;
    let index: Index = Arc::default();
    // The index starts from a listing at `after`, so a compaction later can be diffed.
    let mut indexed = false;
    let mut backoff = RETRY_MIN;
    loop {
        if !indexed {
            match list(&client, &prefix, "").await {
                Ok(snapshot) => {
                    let mut map = index.lock().expect("not poisoned");
                    map.clear();
                    map.extend(snapshot.entries.into_iter().map(|e| (e.key, e.mod_revision)));
                    // Changes between `after` and this listing are delivered by the watch below.
                    drop(map);
                    indexed = true;
                }
                Err(e) => {
                    lost(&health, e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
            }
        }
        match watch_once(&client, &prefix, &mut last, &index, &changes, &health).await {
            WatchEnd::Compacted => {
                tracing::warn!(revision = last + 1, "etcd compacted past the watch: re-listing");
                match resync(&client, &prefix, &mut last, &index, &changes).await {
                    Ok(()) => backoff = RETRY_MIN,
                    Err(e) => lost(&health, e.to_string()),
                }
            }
            WatchEnd::Broken(why, was_created) => {
                // A watch that ran is resumed at once; only repeated failures back off.
                if was_created {
                    backoff = RETRY_MIN;
                }
                lost(&health, why);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

fn lost(health: &watch::Sender<Health>, why: String) {
    // Nobody holds the health any more: the store was dropped (its abort of this task races
    // the client's connection closing), and a one-shot command must not print a second line.
    if health.is_closed() {
        return;
    }
    let why = format!("lost etcd: {why}");
    health.send_if_modified(|h| {
        let since = match h {
            Health::Lost(old, _) if *old == why => return false,
            Health::Lost(_, since) => *since,
            Health::Connected => std::time::Instant::now(),
        };
        tracing::warn!(error = %why, "store watch");
        *h = Health::Lost(why.clone(), since);
        true
    });
}

enum WatchEnd {
    Compacted,
    /// Why, and whether the watch had been created (changes were flowing) before it broke.
    Broken(String, bool),
}

/// One watch stream from `last + 1`, delivering whole revisions in order, each once.
async fn watch_once(
    client: &Client,
    prefix: &str,
    last: &mut Revision,
    index: &Index,
    changes: &broadcast::Sender<Change>,
    health: &watch::Sender<Health>,
) -> WatchEnd {
    let options = WatchOptions::new().with_prefix().with_start_revision(*last as i64 + 1);
    let mut watch_client = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
    let mut stream = match watch_client.watch(prefix.as_bytes(), Some(options)).await {
        Ok(stream) => stream,
        Err(e) => return WatchEnd::Broken(e.to_string(), false),
    };
    let mut created = false;
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return WatchEnd::Broken("watch stream closed".into(), created),
            Err(e) => return WatchEnd::Broken(e.to_string(), created),
        };
        if response.compact_revision() > 0 {
            return WatchEnd::Compacted;
        }
        if response.canceled() {
            return WatchEnd::Broken(format!("watch canceled: {}", response.cancel_reason()), created);
        }
        if response.created() {
            created = true;
            health.send_if_modified(|h| std::mem::replace(h, Health::Connected) != Health::Connected);
        }
        // Events of one revision always arrive in one response (no fragmenting is asked for).
        let mut by_revision: BTreeMap<Revision, Vec<Op>> = BTreeMap::new();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision() as Revision;
            if revision <= *last {
                continue; // a repeat (etcd 3.4.23 can send an event twice)
            }
            let Ok(entry) = kv_entry(prefix, kv) else { continue };
            by_revision.entry(revision).or_default().push(match event.event_type() {
                EventType::Put => Op::Put { key: entry.key, value: entry.value },
                EventType::Delete => Op::Delete { key: entry.key },
            });
        }
        for (revision, ops) in by_revision {
            deliver(index, changes, Change { revision, ops });
            *last = revision;
        }
    }
}

fn deliver(index: &Index, changes: &broadcast::Sender<Change>, change: Change) {
    {
        let mut map = index.lock().expect("not poisoned");
        for op in &change.ops {
            match op {
                Op::Put { key, .. } => map.insert(key.clone(), change.revision),
                Op::Delete { key } => map.remove(key),
                // Never in a change: etcd reports each key a range delete removed.
                Op::DeletePrefix { .. } => None,
            };
        }
    }
    // No receivers is fine: nobody watches yet.
    let _ = changes.send(change);
}

/// After a compaction: lists the prefix now and sends, as one change at the listing's
/// revision, every put and delete that turns what the index knew into what is there.
async fn resync(
    client: &Client,
    prefix: &str,
    last: &mut Revision,
    index: &Index,
    changes: &broadcast::Sender<Change>,
) -> Result<(), StoreError> {
    let snapshot = list(client, prefix, "").await?;
    let mut ops = Vec::new();
    {
        let known = index.lock().expect("not poisoned");
        let mut now = std::collections::HashSet::with_capacity(snapshot.entries.len());
        for entry in snapshot.entries {
            now.insert(entry.key.clone());
            if known.get(&entry.key) != Some(&entry.mod_revision) {
                ops.push(Op::Put { key: entry.key, value: entry.value });
            }
        }
        for key in known.keys() {
            if !now.contains(key) {
                ops.push(Op::Delete { key: key.clone() });
            }
        }
    }
    if !ops.is_empty() && snapshot.revision > *last {
        deliver(index, changes, Change { revision: snapshot.revision, ops });
    }
    *last = (*last).max(snapshot.revision);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let c = EtcdConfig::parse("etcd://h1:2379,h2:2379").unwrap();
        assert_eq!(
            (c.endpoints.as_slice(), c.prefix.as_str()),
            (["h1:2379".to_string(), "h2:2379".into()].as_slice(), "/hush")
        );
        assert_eq!(EtcdConfig::parse("etcd://h1:2379/team/a/").unwrap().prefix, "/team/a");
        assert_eq!(EtcdConfig::parse("etcd://[::1]:2379/p").unwrap().endpoints, ["[::1]:2379"]);
        for bad in ["redb:/x", "etcd://", "etcd://h1", "etcd://h1:1,,h2:2", "etcd://u@h:1"] {
            assert!(EtcdConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/hush/"), b"/hush0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
    }
}
