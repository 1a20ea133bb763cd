//! `hush vault init`: a new data dir with its key hierarchy, CA, server certificate and admin
//! client bundle.
//!
//! # Security
//! Private keys that can sign for the vault (the CA's, the server's) are sealed under the data
//! key. With autolock the admin bundle must live outside the data dir: its key would let
//! whoever copies the data dir act as admin on the running vault.

use crate::ca::{ADMIN_OU, CaError, CertificateAuthority, SERVER_KEY_PURPOSE};
use crate::crypto::Key;
use crate::fsutil::{create_private_dir, write_private_atomic};
use crate::keyring::{Keyring, KeyringError, UnlockKey, write_sealed};
use crate::layout::DataDir;
use crate::store::redb::RedbStore;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("data dir {0} is already initialised")]
    AlreadyInitialised(String),
    #[error(
        "--autolock needs --admin-dir DIR outside the data dir: an admin key stored in the data dir would let whoever copies it act as admin"
    )]
    AdminDirInDataDir,
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
    /// Where to write the admin bundle; `DATA_DIR/admin` when not given (refused with autolock).
    pub admin_dir: Option<PathBuf>,
    /// The vault's data lives in a shared store (etcd): no embedded store file is made.
    pub external_store: bool,
}

pub struct Initialised {
    pub admin_dir: PathBuf,
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
    let admin_dir = options.admin_dir.clone().unwrap_or_else(|| dir.admin_dir());
    if options.autolock && (options.admin_dir.is_none() || is_inside(&admin_dir, dir.root())) {
        return Err(InitError::AdminDirInDataDir);
    }
    create_private_dir(dir.root()).map_err(io(dir.root()))?;
    let data_key = Key::random();
    let ca = CertificateAuthority::generate()?;
    ca.save(dir, &data_key)?;
    // Leaf then CA: joining agents find the CA in the chain and check it against their token.
    let server = ca.issue_server(&options.advertise)?;
    let chain = format!("{}{}", server.cert_pem, ca.cert_pem());
    write_private_atomic(&dir.server_cert(), chain.as_bytes()).map_err(io(&dir.server_cert()))?;
    write_sealed(&dir.server_key(), &data_key, SERVER_KEY_PURPOSE, server.key_pem.as_bytes())
        .map_err(io(&dir.server_key()))?;
    let unlock_only = ca.issue_unlock_only()?;
    let chain = format!("{}{}", unlock_only.cert_pem, ca.cert_pem());
    write_private_atomic(&dir.unlock_cert(), chain.as_bytes()).map_err(io(&dir.unlock_cert()))?;
    write_private_atomic(&dir.unlock_key(), unlock_only.key_pem.as_bytes()).map_err(io(&dir.unlock_key()))?;

    create_private_dir(&admin_dir).map_err(io(&admin_dir))?;
    let admin = ca.issue_client("admin", ADMIN_OU)?;
    for (file, contents) in [("ca.pem", ca.cert_pem()), ("cert.pem", &admin.cert_pem), ("key.pem", &admin.key_pem)] {
        let path = admin_dir.join(file);
        write_private_atomic(&path, contents.as_bytes()).map_err(io(&path))?;
    }
    if !options.external_store {
        drop(RedbStore::open(&dir.store())?);
    }
    let (_keyring, unlock_key) = Keyring::create_for(dir, &data_key, options.autolock)?;
    Ok(Initialised { admin_dir, ca_fingerprint: ca.fingerprint()?, unlock_key })
}

/// Whether `path` is `dir` or below it (compared after resolving what exists of each).
fn is_inside(path: &Path, dir: &Path) -> bool {
    let absolute = |p: &Path| {
        let p = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
        // Resolve the longest existing ancestor, keep the rest as written.
        let mut existing = p.as_path();
        let mut rest = Vec::new();
        while !existing.exists() {
            let Some(parent) = existing.parent() else { break };
            rest.push(existing.file_name().map(PathBuf::from).unwrap_or_default());
            existing = parent;
        }
        let mut resolved = existing.canonicalize().unwrap_or_else(|_| existing.to_path_buf());
        for part in rest.into_iter().rev() {
            resolved.push(part);
        }
        resolved
    };
    absolute(path).starts_with(absolute(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autolock_refuses_an_admin_dir_inside_the_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        for admin_dir in [None, Some(tmp.path().join("data/admin")), Some(tmp.path().join("data/./x/../admin"))] {
            let options = InitOptions { autolock: true, admin_dir, ..Default::default() };
            assert!(matches!(init(&dir, &options), Err(InitError::AdminDirInDataDir)));
            assert!(!dir.root().exists(), "nothing written");
        }
        let options = InitOptions { autolock: true, admin_dir: Some(tmp.path().join("admin")), ..Default::default() };
        let done = init(&dir, &options).unwrap();
        assert!(done.unlock_key.is_some());
        assert!(tmp.path().join("admin/key.pem").exists());
        for path in [dir.ca_key(), dir.server_key()] {
            let bytes = std::fs::read(&path).unwrap();
            assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"), "{} in the clear", path.display());
        }
    }
}
