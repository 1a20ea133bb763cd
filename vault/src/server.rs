//! Serving a vault: mutual TLS (TLS 1.3 only, client certificates signed by the vault's CA; see
//! tls.rs) on an already bound listener, until a shutdown future completes. The server presents its
//! certificate followed by the CA's, so a joining agent can pin the CA by fingerprint.
//! Connections come through the bounded acceptor (acceptor.rs): per-peer and total limits,
//! a handshake timeout, and an open-files limit raised at start.

use crate::acceptor;
use crate::api::AdminService;
use crate::layout::DataDir;
use crate::node_api::NodeService;
use crate::vault::{Vault, VaultStateError};
use hush_proto::v1::admin_server::AdminServer;
use hush_proto::v1::node_server::NodeServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::Server;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Vault(#[from] VaultStateError),
    #[error("reading TLS material {path}: {error}")]
    TlsFile { path: String, error: std::io::Error },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|error| ServeError::TlsFile { path: path.display().to_string(), error })
}

/// Opens the vault in `dir` and serves it on `listener` until `shutdown` resolves.
pub async fn serve(
    dir: &DataDir,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let vault = Arc::new(Vault::open(dir)?);
    if vault.is_locked() {
        tracing::warn!("vault is autolocked: it serves nothing until `hush vault unlock`");
    }
    serve_vault(vault, dir, listener, shutdown).await
}

/// Serves an opened vault (tests use this to keep a handle on it).
pub async fn serve_vault(
    vault: Arc<Vault>,
    dir: &DataDir,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if vault.cluster().is_none() {
        // An embedded vault: a cluster of one, which leads (and runs the singleton jobs).
        let id = crate::replica::replica_id(dir).unwrap_or_else(|_| "local".into());
        let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let settings = crate::cluster::Settings::default();
        vault.start_cluster(crate::cluster::Cluster::new(id, address, crate::cluster::Backend::Embedded, settings));
    }
    let config = crate::tls::server_config(vault.tls_identities(), &read(&dir.ca_cert())?)?;
    let limits = acceptor::Limits::from_env(acceptor::raise_open_files_limit());
    let incoming = acceptor::incoming(listener, Arc::new(config), limits);
    let stopping = vault.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.begin_shutdown();
    };
    Server::builder()
        .add_service(AdminServer::new(AdminService::new(vault.clone())))
        .add_service(NodeServer::new(NodeService::new(vault)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
