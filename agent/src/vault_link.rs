//! The agent's connection to the vault: joining, the mTLS channels, unary calls that fail over
//! between replicas, and the assignment stream turned into state (reconnecting with backoff,
//! resuming with a full snapshot). Snapshots arrive in parts (values, tasks, end); each value once
//! per stream.

use crate::pin;
use crate::reconcile::{Reconciler, ValueKey, Values, value_key};
use crate::state::{NodeIdentity, NodeInfo, StateDir};
use http_body_util::{BodyExt, Full};
use hush_fuse::Plaintext;
use hush_proto::addr::host_of;
use hush_proto::v1 as pb;
use hush_proto::v1::assignment_part::Part;
use hush_proto::v1::node_client::NodeClient;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Code;
use tonic::body::Body;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tower::ServiceExt;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("invalid join token: it is malformed (expected HUSHTKN-1-<fingerprint>-<secret>)")]
    MalformedToken,
    #[error(transparent)]
    Pin(#[from] pin::PinError),
    #[error("join refused by the vault: {0}")]
    Refused(String),
    /// The vault could not take the join now (a contended token, too many joins from this
    /// address at once, a replica cut off from its store): worth asking again.
    #[error("the vault could not take the join now: {0}")]
    Busy(String),
    #[error("cannot reach the vault at {0}: {1}")]
    Unreachable(String, String),
    #[error("cannot create a node key: {0}")]
    Key(String),
    #[error("cannot save the node identity in the state dir: {0}")]
    Save(std::io::Error),
}

fn endpoint(addr: &str, tls: ClientTlsConfig) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// The vault replicas in a `--vault` value: `a:7443,b:7443,c:7443`.
pub fn vault_addresses(vaults: &str) -> Vec<String> {
    vaults.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect()
}

/// The node's mTLS channel to one replica; connects lazily and reconnects by itself.
fn replica_channel(identity: &NodeIdentity, addr: &str) -> Result<Channel, String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.ca_pem))
        .identity(Identity::from_pem(&identity.cert_pem, identity.key_pem.as_bytes()))
        .domain_name(host_of(addr).to_string());
    Ok(endpoint(addr, tls)?.connect_lazy())
}

/// One mTLS channel per replica in `vaults` (comma-separated), starting at a replica picked by
/// the node's ID, so that nodes spread over the replicas.
fn spread_channels(identity: &NodeIdentity, vaults: &str) -> Result<Vec<Channel>, String> {
    let mut channels: Vec<Channel> =
        vault_addresses(vaults).iter().map(|addr| replica_channel(identity, addr)).collect::<Result<_, _>>()?;
    if channels.is_empty() {
        return Err(format!("no vault address in {vaults:?}"));
    }
    let spread = identity.info.node_id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    let first = spread % channels.len();
    channels.rotate_left(first);
    Ok(channels)
}

/// The node's channel for unary calls (StartTask, EndTask, SyncTasks, ReportAccess): see
/// [`NodeChannel`].
pub fn node_channel(identity: &NodeIdentity, vaults: &str) -> Result<NodeChannel, String> {
    Ok(NodeChannel { replicas: spread_channels(identity, vaults)?.into(), preferred: Default::default() })
}

/// One mTLS channel per replica in `vaults`, for the assignment stream: it must be able to leave
/// a replica that answers but refuses (one that lost its store). The list starts at a replica
/// picked by the node's ID.
pub fn replica_channels(identity: &NodeIdentity, vaults: &str) -> Result<Vec<Channel>, String> {
    spread_channels(identity, vaults)
}

/// Unary calls over every replica: each call goes to the replica that answered the last one,
/// and when that replica cannot take it (it cannot be reached, its connection breaks, or it
/// answers `Unavailable`, as one cut off from its store does), the same call goes to the next
/// replica, then the next, once each. The request is small and buffered so it can be sent again.
///
/// Sending again is safe for each node call: SyncTasks and EndTask are idempotent; ReportAccess
/// batches are sent again anyway until one is acknowledged; a StartTask whose first try may have
/// been recorded (a store that failed mid-commit) leaves a task that no agent runs, which the
/// node's next SyncTasks ends, and the vault ends a task whose caller went away. A replica that
/// answers anything else (a refusal, or success) is not asked again.
#[derive(Clone)]
pub struct NodeChannel {
    replicas: Arc<[Channel]>,
    /// The replica the next call goes to first.
    preferred: Arc<AtomicUsize>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<Body>> for NodeChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each try waits for its own replica's channel to be ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(request).await })
    }
}

impl NodeChannel {
    async fn send(&self, request: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let count = self.replicas.len();
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut last = None;
        for step in 0..count {
            let at = (first + step) % count;
            let attempt = http::Request::from_parts(parts.clone(), Body::new(Full::new(body.clone())));
            let outcome = self.replicas[at].clone().oneshot(attempt).await;
            let why = match &outcome {
                Err(e) => e.to_string(),
                Ok(response) if is_unavailable(response) => "it answered unavailable".to_string(),
                Ok(_) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return outcome.map_err(Into::into);
                }
            };
            tracing::info!(call = %parts.uri.path(), replica = at, error = %why, "vault replica cannot take the call; trying the next");
            last = Some(outcome);
        }
        // Every replica failed: the next call starts at another one.
        self.preferred.store(first + 1, Ordering::Relaxed);
        last.expect("a node channel has at least one replica").map_err(Into::into)
    }
}

/// Whether a response is a gRPC `Unavailable` status sent before any message (a trailers-only
/// response carries its status in the headers).
fn is_unavailable(response: &http::Response<Body>) -> bool {
    response.headers().get("grpc-status").is_some_and(|code| code.as_bytes() == b"14")
}

/// How long an agent keeps asking a vault that could not take its join now.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);
const JOIN_PAUSE_MIN: Duration = Duration::from_millis(200);
const JOIN_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Joins through the first replica in `vaults` (comma-separated) that takes the join, and keeps
/// the whole list in the state dir. Agents that boot together on one token contend for its use
/// count (and count against the vault's per-address join limit): a join the vault could not take
/// now is asked again, after a pause that doubles (up to [`JOIN_PAUSE_MAX`]) with jitter so the
/// agents spread out, for up to [`JOIN_PATIENCE`]. A definitive refusal (a wrong, expired, used
/// up or revoked token) is never asked again.
pub async fn join(vaults: &str, token: &str, state: &StateDir) -> Result<NodeIdentity, JoinError> {
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    let mut pause = JOIN_PAUSE_MIN;
    loop {
        match join_any(vaults, token, state).await {
            Err(JoinError::Busy(why)) if tokio::time::Instant::now() + pause < deadline => {
                let wait = jittered(pause);
                tracing::info!(error = %why, retry_in = ?wait, "the vault could not take the join now; asking again");
                tokio::time::sleep(wait).await;
                pause = (pause * 2).min(JOIN_PAUSE_MAX);
            }
            result => return result,
        }
    }
}

/// A pause between half of `pause` and all of it ("equal jitter").
fn jittered(pause: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A randomly keyed hasher: random enough to spread agents apart, with no extra crate.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let half = pause / 2;
    half + Duration::from_nanos(random % (half.as_nanos() as u64).max(1))
}

/// One round over the replicas: the first that takes the join, or the last failure. A replica
/// that cannot be reached or could not take the join now makes way for the next.
async fn join_any(vaults: &str, token: &str, state: &StateDir) -> Result<NodeIdentity, JoinError> {
    let mut last = None;
    for addr in vault_addresses(vaults) {
        match join_one(&addr, vaults, token, state).await {
            Err(JoinError::Unreachable(addr, why)) => {
                tracing::warn!(vault = %addr, error = %why, "vault replica unreachable; trying the next");
                last = Some(JoinError::Unreachable(addr, why));
            }
            Err(JoinError::Pin(e)) => {
                tracing::warn!(vault = %addr, error = %e, "vault replica unreachable; trying the next");
                last = Some(JoinError::Pin(e));
            }
            // A busy answer outranks an unreachable one: asking again may help.
            Err(JoinError::Busy(why)) => last = Some(JoinError::Busy(why)),
            result => return result,
        }
    }
    Err(last.unwrap_or_else(|| JoinError::Unreachable(vaults.to_string(), "no address given".into())))
}

/// Whether a refused join may be taken if asked again: the token's use count was contended, the
/// address had too many joins at once, or the replica could not reach its store.
fn busy(code: Code) -> bool {
    matches!(code, Code::Aborted | Code::ResourceExhausted | Code::Unavailable | Code::DeadlineExceeded)
}

/// Joins the vault at `vault`: pins its CA by the token's fingerprint, makes a key here (it
/// never leaves the node), has the vault sign it, and saves the identity (with `vaults`).
async fn join_one(vault: &str, vaults: &str, token: &str, state: &StateDir) -> Result<NodeIdentity, JoinError> {
    let (fingerprint, _) = hush_proto::token::split(token).ok_or(JoinError::MalformedToken)?;
    let ca_pem = pin::fetch_pinned_ca(vault, fingerprint).await?;
    let key = rcgen::KeyPair::generate().map_err(|e| JoinError::Key(e.to_string()))?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|params| params.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .map_err(|e| JoinError::Key(e.to_string()))?;
    let tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)).domain_name(host_of(vault).to_string());
    let unreachable = |e: String| JoinError::Unreachable(vault.to_string(), e);
    let channel = endpoint(vault, tls).map_err(unreachable)?.connect().await.map_err(|e| unreachable(e.to_string()))?;
    let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let response = NodeClient::new(channel)
        .join(pb::JoinRequest {
            token: token.trim().to_string(),
            csr_pem: csr,
            hostname,
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        })
        .await
        .map_err(|status| match busy(status.code()) {
            true => JoinError::Busy(status.message().to_string()),
            false => JoinError::Refused(status.message().to_string()),
        })?
        .into_inner();
    let identity = NodeIdentity {
        info: NodeInfo { node_id: response.node_id, vault: vaults.to_string() },
        ca_pem: response.ca_pem,
        cert_pem: response.cert_pem,
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
    };
    state.save(&identity).map_err(JoinError::Save)?;
    Ok(identity)
}

/// How the assignment loop ended.
#[derive(Debug)]
pub enum LinkEnd {
    Shutdown,
    /// The vault removed this node: its certificate is refused for good.
    Revoked(String),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Follows the node's assignment stream for the agent's life. On every (re)connection it first
/// tells the vault which tasks still run here, then applies each snapshot it receives.
/// Each stream goes to one replica of `channels` ([`replica_channels`]); when it breaks or is
/// refused the next one goes to the next replica, and the wait between tries grows only once
/// every replica has failed in turn.
pub async fn follow_assignments(
    channels: Vec<Channel>,
    reconciler: Arc<Reconciler>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> LinkEnd {
    let mut backoff = BACKOFF_MIN;
    let mut at = 0;
    loop {
        let status = tokio::select! {
            status = stream_once(NodeClient::new(channels[at].clone()), &reconciler) => status,
            _ = shutdown.changed() => return LinkEnd::Shutdown,
        };
        let was_connected = reconciler.set_connected(false);
        if status.code() == Code::PermissionDenied {
            return LinkEnd::Revoked(status.message().to_string());
        }
        if was_connected {
            backoff = BACKOFF_MIN;
            tracing::warn!(error = %status.message(), "lost the vault; running tasks keep their files; reconnecting");
        } else {
            tracing::debug!(error = %status.message(), "vault still unreachable");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return LinkEnd::Shutdown,
        }
        at = (at + 1) % channels.len();
        if at == 0 {
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// One connection's worth of the stream; returns why it ended.
async fn stream_once(mut client: NodeClient<Channel>, reconciler: &Reconciler) -> tonic::Status {
    let result: Result<(), tonic::Status> = async {
        client.sync_tasks(pb::SyncTasksRequest { running: reconciler.running_tasks() }).await?;
        let mut stream = client
            .assignments(pb::AssignmentsRequest { open_audit_off: !crate::audit::open_events() })
            .await?
            .into_inner();
        reconciler.set_connected(true);
        tracing::info!("assignment stream open");
        // Parts of the snapshot being received; only its end makes it current.
        let mut values = Values::new();
        let mut tasks = Vec::new();
        let mut services = Vec::new();
        while let Some(part) = stream.message().await? {
            match part.part {
                Some(Part::Value(mut value)) => {
                    let content = Arc::new(Plaintext::new(std::mem::take(&mut value.data)));
                    values.insert(value_key(value.kind, value.object_id, value.version), content);
                }
                Some(Part::Task(task)) => tasks.push(task),
                Some(Part::Service(service)) => services.push(service),
                Some(Part::End(_revision)) => {
                    let snapshot = std::mem::take(&mut tasks);
                    let runnable = std::mem::take(&mut services);
                    // The vault forgets the same values: it will send them again if named again.
                    let named: std::collections::HashSet<ValueKey> = snapshot
                        .iter()
                        .flat_map(|t| &t.files)
                        .chain(runnable.iter().flat_map(|s| &s.files))
                        .map(|f| value_key(f.kind, f.object_id.clone(), f.version))
                        .collect();
                    values.retain(|key, _| named.contains(key));
                    reconciler.set_assignment(snapshot, runnable, &values);
                }
                None => {}
            }
        }
        Ok(())
    }
    .await;
    result.err().unwrap_or_else(|| tonic::Status::unavailable("the vault closed the assignment stream"))
}
