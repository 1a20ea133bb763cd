//! `hush vault init`: a new data dir with its key hierarchy, CA, server certificate and admin
//! client bundle.

use crate::ca::{ADMIN_OU, CaError, CertificateAuthority};
use crate::fsutil::{create_private_dir, write_private_atomic};
use crate::keyring::{Keyring, KeyringError, UnlockKey};
use crate::layout::DataDir;
use crate::store::redb::RedbStore;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("data dir {0} is already initialised")]
    AlreadyInitialised(String),
    #[error("data dir {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

#[derive(Debug, Default, Clone)]
pub struct InitOptions {
    pub autolock: bool,
    /// Extra names or addresses the server certificate must be valid for.
    pub advertise: Vec<String>,
}

pub struct Initialised {
    pub ca_fingerprint: String,
    /// Shown once, when autolocked.
    pub unlock_key: Option<UnlockKey>,
}

/// Creates everything a vault needs in `dir`. The keyring is written last: a dir without it
/// counts as not initialised, so an interrupted init can simply be run again.
pub fn init(dir: &DataDir, options: &InitOptions) -> Result<Initialised, InitError> {
    if dir.is_initialised() {
        return Err(InitError::AlreadyInitialised(dir.root().display().to_string()));
    }
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |error| InitError::Io { path, error }
    };
    create_private_dir(dir.root()).map_err(io(dir.root()))?;
    let ca = CertificateAuthority::generate()?;
    ca.save(dir)?;
    let server = ca.issue_server(&options.advertise)?;
    // Leaf then CA: joining agents find the CA in the chain and check it against their token.
    let chain = format!("{}{}", server.cert_pem, ca.cert_pem());
    write_private_atomic(&dir.server_cert(), chain.as_bytes()).map_err(io(&dir.server_cert()))?;
    write_private_atomic(&dir.server_key(), server.key_pem.as_bytes()).map_err(io(&dir.server_key()))?;

    let admin_dir = dir.admin_dir();
    create_private_dir(&admin_dir).map_err(io(&admin_dir))?;
    let admin = ca.issue_client("admin", ADMIN_OU)?;
    for (file, contents) in [("ca.pem", ca.cert_pem()), ("cert.pem", &admin.cert_pem), ("key.pem", &admin.key_pem)] {
        let path = admin_dir.join(file);
        write_private_atomic(&path, contents.as_bytes()).map_err(io(&path))?;
    }
    drop(RedbStore::open(&dir.store())?);
    let (_keyring, _data_key, unlock_key) = Keyring::create(dir, options.autolock)?;
    Ok(Initialised { ca_fingerprint: ca.fingerprint()?, unlock_key })
}
