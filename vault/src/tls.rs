//! The vault's TLS server: TLS 1.3 only (tonic turns on rustls's `tls12` feature, so the
//! protocol versions are set here rather than left to features), optional client
//! certificates checked against the vault's CA, and the server identity chosen per handshake.
//!
//! # Security
//! A locked vault cannot open its server key (it is sealed under the data key), so until
//! `hush vault unlock` it presents the *unlock-only* identity, valid for [`UNLOCK_NAME`] alone.
//! Clients verify the server's name: only `hush vault unlock` (and the status probe) asks for
//! that name, so a thief holding a copy of the data dir — which holds the unlock-only key in
//! the clear — can pose as a locked vault to whoever unlocks through it, and as nothing else.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::sync::{Arc, RwLock};

/// The only name the unlock-only certificate is valid for (`.invalid` is reserved: no real
/// host has it, so no other client ever accepts this certificate).
pub const UNLOCK_NAME: &str = "unlock.hush.invalid";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS material: {0}")]
    Pem(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain (PEM) and its private key (PEM) as rustls signs with them.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Pem("certificate chain: no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Picks the identity a handshake gets: the unlock-only one when the client asks for
/// [`UNLOCK_NAME`] or while the vault is locked, the server identity otherwise.
#[derive(Debug)]
pub struct Identities {
    unlock_only: Arc<CertifiedKey>,
    server: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Identities {
    pub fn new(unlock_only: Arc<CertifiedKey>) -> Self {
        Self { unlock_only, server: RwLock::new(None) }
    }

    /// Called when the vault unlocks (or opens without autolock) with its unsealed server key.
    pub fn set_server(&self, server: Arc<CertifiedKey>) {
        *self.server.write().expect("lock poisoned only by a panic") = Some(server);
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        if server_name == Some(UNLOCK_NAME) {
            return self.unlock_only.clone();
        }
        let server = self.server.read().expect("lock poisoned only by a panic");
        server.clone().unwrap_or_else(|| self.unlock_only.clone())
    }
}

impl ResolvesServerCert for Identities {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()))
    }
}

/// TLS 1.3 only; client certificates optional at this layer so that `Join` can be called with
/// just a token (every other call checks for one, see identity.rs); HTTP/2 by ALPN.
pub fn server_config(identities: Arc<Identities>, ca_pem: &[u8]) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identities);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
