//! Trust on first contact, pinned by the join token: one TLS handshake that accepts any
//! server chain only to read it, then keeps the CA certificate whose SHA-256 matches the
//! token's fingerprint. Everything after uses normal verification against that CA.

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot reach the vault at {0}: {1}")]
    Unreachable(String, String),
    #[error(
        "the vault at {0} does not present the CA named by the join token (fingerprint mismatch): wrong vault, or a token of another vault"
    )]
    Mismatch(String),
}

/// Accepts any chain (signatures still checked): only used to read the chain, never to talk.
#[derive(Debug)]
struct ReadChainOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for ReadChainOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The PEM of the CA certificate in the vault's chain whose SHA-256 is `fingerprint`.
pub async fn fetch_pinned_ca(addr: &str, fingerprint: &str) -> Result<String, PinError> {
    let unreachable = |e: &dyn std::fmt::Display| PinError::Unreachable(addr.to_string(), e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReadChainOnly(provider)))
        .with_no_client_auth();
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|e| unreachable(&e))?
        .map_err(|e| unreachable(&e))?;
    let name = ServerName::try_from(hush_proto::addr::host_of(addr).to_string()).map_err(|e| unreachable(&e))?;
    let tls =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| unreachable(&e))?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    let ca = chain
        .iter()
        .find(|cert| hex::encode(Sha256::digest(cert.as_ref())).eq_ignore_ascii_case(fingerprint))
        .ok_or_else(|| PinError::Mismatch(addr.to_string()))?;
    Ok(to_pem(ca.as_ref()))
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).expect("base64 is ASCII")).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}
