//! The vault's certificate authority: the CA itself, the server certificate, and client
//! certificates whose Organizational Unit names their role (admin or node).
//!
//! # Security
//! The CA's private key is stored sealed under the data key (`ca/ca.key.sealed`): a vault that
//! is locked, or a copy of its data dir without the unlock key, cannot sign anything.

use crate::crypto::{Key, sha256_hex};
use crate::fsutil::{create_private_dir, write_private_atomic};
use crate::keyring::{read_sealed, write_sealed};
use crate::layout::DataDir;
use hush_proto::addr::host_of;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::fs;
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// OU of admin client certificates.
pub const ADMIN_OU: &str = "hush-admin";
/// OU of node client certificates.
pub const NODE_OU: &str = "hush-node";

/// Purposes bound into the sealed key files (see `keyring::write_sealed`).
pub const CA_KEY_PURPOSE: &str = "ca-key";
pub const SERVER_KEY_PURPOSE: &str = "server-key";

const CA_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(1825);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("CA file {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("invalid PEM in {0}")]
    Pem(String),
    #[error("{0} does not open with this vault's data key (altered, or from another vault)")]
    Sealed(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |error| CaError::Io { path: path.display().to_string(), error }
}

/// A PEM certificate and its PEM private key (zeroed on drop).
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
}

fn validity(params: &mut CertificateParams, length: Duration) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that disagree by a few minutes.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + length;
}

/// The CA, loaded to sign.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl CertificateAuthority {
    /// A new self-signed CA.
    pub fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, "Hush CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// Opens the CA's sealed key with the data key.
    pub fn load(dir: &DataDir, data_key: &Key) -> Result<Self, CaError> {
        let cert_pem = fs::read_to_string(dir.ca_cert()).map_err(io_err(&dir.ca_cert()))?;
        let key_pem = read_sealed(&dir.ca_key(), data_key, CA_KEY_PURPOSE)
            .map_err(io_err(&dir.ca_key()))?
            .ok_or_else(|| CaError::Sealed(dir.ca_key().display().to_string()))?;
        let key_pem = std::str::from_utf8(key_pem.expose_secret()).map_err(|_| CaError::Pem("CA key".into()))?;
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self { issuer, cert_pem })
    }

    /// Writes the certificate in the clear and the key sealed under the data key.
    pub fn save(&self, dir: &DataDir, data_key: &Key) -> Result<(), CaError> {
        create_private_dir(&dir.ca_dir()).map_err(io_err(&dir.ca_dir()))?;
        let key_pem = zeroize::Zeroizing::new(self.issuer.key().serialize_pem());
        write_sealed(&dir.ca_key(), data_key, CA_KEY_PURPOSE, key_pem.as_bytes()).map_err(io_err(&dir.ca_key()))?;
        write_private_atomic(&dir.ca_cert(), self.cert_pem.as_bytes()).map_err(io_err(&dir.ca_cert()))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate's DER, hex: what a join token pins.
    pub fn fingerprint(&self) -> Result<String, CaError> {
        fingerprint_pem(&self.cert_pem)
    }

    /// The server certificate: valid for `localhost`, loopback and every advertised address.
    pub fn issue_server(&self, advertise: &[String]) -> Result<CertifiedKey, CaError> {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        for addr in advertise {
            let host = host_of(addr);
            if !names.iter().any(|n| n == host) {
                names.push(host.to_string());
            }
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, "hush-vault");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// The unlock-only server certificate: valid for [`crate::tls::UNLOCK_NAME`] alone, so no
    /// client accepts it for anything but `hush vault unlock` (see tls.rs).
    pub fn issue_unlock_only(&self) -> Result<CertifiedKey, CaError> {
        let mut params = CertificateParams::new(vec![crate::tls::UNLOCK_NAME.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, "hush-vault-unlock-only");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate: CN = identity, OU = role.
    pub fn issue_client(&self, common_name: &str, role_ou: &str) -> Result<CertifiedKey, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationalUnitName, role_ou);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// Signs a node's certificate request. Only its public key is taken from the request: the
    /// subject (node ID, role) is the vault's to decide.
    pub fn sign_request(&self, csr_pem: &str, common_name: &str, role_ou: &str) -> Result<String, CaError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationalUnitName, role_ou);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_VALIDITY);
        csr.params = params;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    fn issue(&self, mut params: CertificateParams) -> Result<CertifiedKey, CaError> {
        validity(&mut params, LEAF_VALIDITY);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: zeroize::Zeroizing::new(key.serialize_pem()) })
    }
}

/// SHA-256 of the first certificate's DER in a PEM text, hex.
pub fn fingerprint_pem(pem: &str) -> Result<String, CaError> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| CaError::Pem("certificate".into()))?;
    Ok(sha256_hex(&parsed.contents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_round_trips_and_signs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let ca = CertificateAuthority::generate().unwrap();
        let data_key = Key::random();
        ca.save(&dir, &data_key).unwrap();
        assert!(!fs::read_to_string(dir.ca_key()).unwrap_or_default().contains("PRIVATE KEY"), "CA key sealed");
        assert!(matches!(CertificateAuthority::load(&dir, &Key::random()), Err(CaError::Sealed(_))));
        let loaded = CertificateAuthority::load(&dir, &data_key).unwrap();
        assert_eq!(loaded.fingerprint().unwrap(), ca.fingerprint().unwrap());
        let client = loaded.issue_client("admin", ADMIN_OU).unwrap();
        assert!(client.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
