//! Where things live in a vault's data directory.

use std::path::{Path, PathBuf};

/// The files of one data directory. Keep every path here so the layout reads in one place.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The wrapped data key and how to unwrap it.
    pub fn keyring(&self) -> PathBuf {
        self.root.join("keyring.json")
    }
    /// The key-encryption key file (0600) of a vault without autolock, named by key id.
    pub fn kek_file(&self, id: &str) -> PathBuf {
        self.root.join(format!("kek-{id}.key"))
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store.redb")
    }
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir().join("ca.pem")
    }
    /// The CA's private key, sealed under the data key.
    pub fn ca_key(&self) -> PathBuf {
        self.ca_dir().join("ca.key.sealed")
    }
    /// The server certificate chain (leaf, then CA).
    pub fn server_cert(&self) -> PathBuf {
        self.ca_dir().join("server.pem")
    }
    /// The server's private key, sealed under the data key.
    pub fn server_key(&self) -> PathBuf {
        self.ca_dir().join("server.key.sealed")
    }
    /// The unlock-only identity (valid for `tls::UNLOCK_NAME` only), what a locked vault
    /// presents: chain and key, in the clear (see tls.rs).
    pub fn unlock_cert(&self) -> PathBuf {
        self.ca_dir().join("unlock.pem")
    }
    pub fn unlock_key(&self) -> PathBuf {
        self.ca_dir().join("unlock.key")
    }
    /// The admin client bundle of a vault without autolock: ca.pem, cert.pem, key.pem (what
    /// `HUSH_TLS_DIR` points at). An autolocked vault's bundle goes to `init --admin-dir`.
    pub fn admin_dir(&self) -> PathBuf {
        self.root.join("admin")
    }
    pub fn audit_dir(&self) -> PathBuf {
        self.root.join("audit")
    }

    /// Initialised means the keyring exists: `init` writes it last.
    pub fn is_initialised(&self) -> bool {
        self.keyring().exists()
    }
}
