//! The agent's state dir: its node identity (key, certificate, the vault's CA), kept 0600 and
//! reused after a restart. Nothing secret from the vault is ever written here.

use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    /// The vault address the node joined.
    pub vault: String,
}

/// PEM material of a joined node.
#[derive(Clone)]
pub struct NodeIdentity {
    pub info: NodeInfo,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
}

pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The identity saved by an earlier join, if any.
    pub fn load(&self) -> io::Result<Option<NodeIdentity>> {
        let info = match fs::read_to_string(self.path("node.json")) {
            Ok(text) => serde_json::from_str(&text).map_err(io::Error::other)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(NodeIdentity {
            info,
            ca_pem: fs::read_to_string(self.path("ca.pem"))?,
            cert_pem: fs::read_to_string(self.path("node.pem"))?,
            key_pem: zeroize::Zeroizing::new(fs::read_to_string(self.path("node.key"))?),
        }))
    }

    /// Saves an identity; `node.json` last, so a partial save is not mistaken for a join.
    pub fn save(&self, identity: &NodeIdentity) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))?;
        write_private(&self.path("node.key"), identity.key_pem.as_bytes())?;
        write_private(&self.path("node.pem"), identity.cert_pem.as_bytes())?;
        write_private(&self.path("ca.pem"), identity.ca_pem.as_bytes())?;
        write_private(&self.path("node.json"), &serde_json::to_vec_pretty(&identity.info).map_err(io::Error::other)?)
    }
}

/// Temp file 0600, fsync, rename: never a half-written key.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}
