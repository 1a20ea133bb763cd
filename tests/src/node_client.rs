//! An in-process node for tests and benches: joins through the node API with a join token
//! (its key made here, its certificate signed by the vault), then holds its assignment stream
//! as the agent does — moving to the next replica when a stream breaks — and records every
//! snapshot it completes, with no agent process and no FUSE mount. Many of them fit in one
//! process (a bench holds 1,000), each on its own TLS connection from a chosen loopback
//! source address, so per-peer connection caps are met the way real nodes meet them.

use hush_proto::addr::host_of;
use hush_proto::v1 as pb;
use hush_proto::v1::assignment_part::Part;
use hush_proto::v1::node_client::NodeClient;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A joined node's identity (kept in memory only).
#[derive(Clone)]
pub struct NodeIdentity {
    pub node_id: String,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// One completed snapshot: every object's version in it (the highest, if several files name
/// the object), when its end marker arrived, and from which replica.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub replica: usize,
    pub revision: u64,
    pub versions: BTreeMap<String, u64>,
}

/// Not streaming from any replica.
pub const NO_REPLICA: usize = usize::MAX;

fn endpoint(addr: &str, tls: ClientTlsConfig, local: Option<IpAddr>) -> Endpoint {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("a valid address")
        .tls_config(tls)
        .expect("TLS config")
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // As the agent: a silent replica (SIGSTOP) is noticed after about 15 s.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .local_address(local)
}

/// Joins through `addr` with `token`, trusting `ca_pem` (the vault's CA, from the admin bundle).
pub async fn join(
    addr: &str,
    token: &str,
    ca_pem: &str,
    hostname: &str,
    local: Option<IpAddr>,
) -> Result<NodeIdentity, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|params| params.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .map_err(|e| e.to_string())?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(host_of(addr));
    let channel = endpoint(addr, tls, local).connect().await.map_err(|e| format!("connect {addr}: {e}"))?;
    let response = NodeClient::new(channel)
        .join(pb::JoinRequest {
            token: token.to_string(),
            csr_pem: csr,
            hostname: hostname.to_string(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        })
        .await
        .map_err(|s| format!("join through {addr}: {}", s.message()))?
        .into_inner();
    Ok(NodeIdentity {
        node_id: response.node_id,
        ca_pem: response.ca_pem,
        cert_pem: response.cert_pem,
        key_pem: key.serialize_pem(),
    })
}

impl NodeIdentity {
    /// A node API client for unary calls (StartTask, SyncTasks, ...) on `addr`, as this node.
    pub fn client(&self, addr: &str) -> NodeClient<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(host_of(addr));
        NodeClient::new(endpoint(addr, tls, None).connect_lazy())
    }
}

/// A node holding its assignment stream on a background task. Dropping it ends the stream.
pub struct StreamNode {
    pub node_id: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The replica it streams from now, or [`NO_REPLICA`].
    replica: Arc<AtomicUsize>,
    ended: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StreamNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StreamNode {
    /// Follows the assignment stream on `addrs[first]`, moving to the next replica in `addrs`
    /// whenever a stream cannot be opened or breaks. A refused certificate (node removed) ends it.
    pub fn follow(identity: NodeIdentity, addrs: Vec<String>, first: usize, local: Option<IpAddr>) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let replica = Arc::new(AtomicUsize::new(NO_REPLICA));
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let channels: Vec<Channel> = addrs
            .iter()
            .map(|addr| {
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&identity.ca_pem))
                    .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
                    .domain_name(host_of(addr));
                endpoint(addr, tls, local).connect_lazy()
            })
            .collect();
        let (task_seen, task_replica, task_ended) = (seen.clone(), replica.clone(), ended.clone());
        let task = tokio::spawn(async move {
            let mut at = first % channels.len();
            loop {
                let status = stream_once(channels[at].clone(), at, &task_seen, &task_replica).await;
                task_replica.store(NO_REPLICA, Ordering::SeqCst);
                if status.code() == tonic::Code::PermissionDenied {
                    *task_ended.lock().expect("not poisoned") = Some(status.message().to_string());
                    return;
                }
                at = (at + 1) % channels.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { node_id: identity.node_id, seen, replica, ended, task }
    }

    /// Every snapshot completed so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// The version of `object_id` in the last completed snapshot, and when it arrived.
    pub fn latest(&self, object_id: &str) -> Option<(u64, Instant)> {
        let seen = self.seen.lock().expect("not poisoned");
        seen.last().and_then(|s| s.versions.get(object_id).map(|v| (*v, s.at)))
    }

    /// When a snapshot first held `object_id` at `version` or later.
    pub fn first_at_least(&self, object_id: &str, version: u64) -> Option<Instant> {
        let seen = self.seen.lock().expect("not poisoned");
        seen.iter().find(|s| s.versions.get(object_id).is_some_and(|v| *v >= version)).map(|s| s.at)
    }

    pub fn replica(&self) -> Option<usize> {
        Some(self.replica.load(Ordering::SeqCst)).filter(|r| *r != NO_REPLICA)
    }

    /// Why the stream ended for good (the node was removed), if it did.
    pub fn ended(&self) -> Option<String> {
        self.ended.lock().expect("not poisoned").clone()
    }
}

/// One stream on one replica; returns why it ended.
async fn stream_once(channel: Channel, at: usize, seen: &Mutex<Vec<Seen>>, replica: &AtomicUsize) -> tonic::Status {
    let result: Result<(), tonic::Status> = async {
        let mut stream = NodeClient::new(channel).assignments(pb::AssignmentsRequest::default()).await?.into_inner();
        replica.store(at, Ordering::SeqCst);
        let mut versions = BTreeMap::new();
        while let Some(part) = stream.message().await? {
            let files = match part.part {
                Some(Part::Task(task)) => task.files,
                Some(Part::Service(service)) => service.files,
                Some(Part::End(revision)) => {
                    let snapshot =
                        Seen { at: Instant::now(), replica: at, revision, versions: std::mem::take(&mut versions) };
                    seen.lock().expect("not poisoned").push(snapshot);
                    continue;
                }
                // Values are dropped at once: only versions are recorded.
                Some(Part::Value(_)) | None => continue,
            };
            for file in files {
                let version = versions.entry(file.object_id).or_insert(0);
                *version = (*version).max(file.version);
            }
        }
        Ok(())
    }
    .await;
    result.err().unwrap_or_else(|| tonic::Status::unavailable("the replica closed the stream"))
}

/// The source addresses to spread `count` nodes over so that no address holds more than
/// `per_address` connections to one replica: 127.0.0.2, 127.0.0.3, ...
pub fn loopback_source(i: usize, per_address: usize) -> IpAddr {
    let n = (i / per_address) as u8;
    IpAddr::from([127, 0, 0, 2u8.saturating_add(n)])
}
