//! Connecting to a vault as an admin: mutual TLS from a bundle directory (ca.pem, cert.pem,
//! key.pem), and turning transport failures into one clear line.

use crate::tls::UNLOCK_NAME;
use hush_proto::addr::host_of;
use hush_proto::v1::StatusRequest;
use hush_proto::v1::admin_client::AdminClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no vault address: set HUSH_VAULT=host:port or pass --vault")]
    NoAddress,
    #[error("no TLS bundle: set HUSH_TLS_DIR to a directory with ca.pem, cert.pem and key.pem, or pass --tls-dir")]
    NoTlsDir,
    #[error("cannot read {path}: {error}")]
    Bundle { path: String, error: std::io::Error },
    #[error("invalid vault address {0:?}: expected host:port")]
    Address(String),
    #[error("cannot reach the vault at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("vault is locked: run `hush vault unlock` and enter the unlock key")]
    Locked,
}

/// The bundle files of a TLS directory.
pub struct TlsBundle {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl TlsBundle {
    pub fn read(dir: &Path) -> Result<Self, ClientError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|error| ClientError::Bundle { path: path.display().to_string(), error })
        };
        Ok(Self { ca: read("ca.pem")?, cert: read("cert.pem")?, key: read("key.pem")? })
    }
}

/// Where the vault is and which bundle to present.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: Option<String>,
    pub tls_dir: Option<PathBuf>,
}

/// A TLS channel to the vault. The handshake happens here, so an untrusted server fails now;
/// a refused client certificate shows only on the first call (see [`explain`]).
pub async fn connect_channel(addr: &str, bundle: &TlsBundle) -> Result<Channel, ClientError> {
    connect_channel_named(addr, bundle, None).await
}

/// As [`connect_channel`], verifying the server as `server_name` instead of the address's host.
async fn connect_channel_named(
    addr: &str,
    bundle: &TlsBundle,
    server_name: Option<&str>,
) -> Result<Channel, ClientError> {
    let host = host_of(addr);
    if host.is_empty() || !addr.contains(':') {
        return Err(ClientError::Address(addr.to_string()));
    }
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&bundle.ca))
        .identity(Identity::from_pem(&bundle.cert, &bundle.key))
        .domain_name(server_name.unwrap_or(host).to_string());
    let uri = format!("https://{addr}");
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|_| ClientError::Address(addr.to_string()))?
        .tls_config(tls)
        .map_err(|e| ClientError::Unreachable { addr: addr.to_string(), reason: e.to_string() })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    endpoint.connect().await.map_err(|e| ClientError::Unreachable { addr: addr.to_string(), reason: root_cause(&e) })
}

fn addr_and_bundle(target: &Target) -> Result<(&str, TlsBundle), ClientError> {
    let addr = target.addr.as_deref().filter(|a| !a.is_empty()).ok_or(ClientError::NoAddress)?;
    let dir = target.tls_dir.as_deref().ok_or(ClientError::NoTlsDir)?;
    Ok((addr, TlsBundle::read(dir)?))
}

/// An admin client of an unlocked vault. A locked vault presents only its unlock-only
/// identity, which fails verification here; then the unlock-only identity is asked whether
/// the vault is locked, so the error says what to do.
pub async fn connect_admin(target: &Target) -> Result<AdminClient<Channel>, ClientError> {
    let (addr, bundle) = addr_and_bundle(target)?;
    // Values up to 1000 KiB plus framing must fit; tonic's default decode limit is 4 MiB.
    match connect_channel(addr, &bundle).await {
        Ok(channel) => Ok(AdminClient::new(channel)),
        Err(error) => {
            // Only a status question goes to the unlock-only identity: nothing else is sent.
            if let Ok(channel) = connect_channel_named(addr, &bundle, Some(UNLOCK_NAME)).await
                && let Ok(status) = AdminClient::new(channel).status(StatusRequest {}).await
                && status.get_ref().locked
            {
                return Err(ClientError::Locked);
            }
            Err(error)
        }
    }
}

/// An admin client that accepts the unlock-only identity: for `hush vault unlock` alone.
///
/// # Security
/// Whoever holds a copy of the data dir holds the unlock-only key too, so this connection
/// proves only that the server belongs to this vault's data dir. Send it nothing but the unlock
/// key, and unlock over a network path you trust (on the vault's host: `127.0.0.1`).
pub async fn connect_admin_for_unlock(target: &Target) -> Result<AdminClient<Channel>, ClientError> {
    let (addr, bundle) = addr_and_bundle(target)?;
    Ok(AdminClient::new(connect_channel_named(addr, &bundle, Some(UNLOCK_NAME)).await?))
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// One line for a failed call. TLS 1.3 reports a refused client certificate only after the
/// handshake, as a broken stream (`Unknown`/`Cancelled`/`Unavailable`), never `Unauthenticated`.
pub fn explain(status: &Status) -> String {
    match status.code() {
        Code::Unknown | Code::Cancelled | Code::Unavailable if status.message().is_empty() || is_transport(status) => {
            let detail =
                std::error::Error::source(status).map(root_cause).unwrap_or_else(|| status.message().to_string());
            format!(
                "the vault closed the connection ({detail}): check that HUSH_TLS_DIR holds a client certificate issued by this vault"
            )
        }
        _ => status.message().to_string(),
    }
}

fn is_transport(status: &Status) -> bool {
    let message = status.message().to_ascii_lowercase();
    ["transport", "connection", "tls", "certificate", "broken pipe", "h2 protocol", "stream"]
        .iter()
        .any(|word| message.contains(word))
}
