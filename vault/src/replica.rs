//! A vault whose store is etcd: what replicas share through etcd, and the options that pick
//! the store.
//!
//! `init --store etcd://...` publishes the vault's shared key material under `cluster/`: the
//! keyring (the data key wrapped by the KEK, with the KEK's public parameters), the CA
//! certificate, the CA key sealed under the data key, and the unlock-only identity. A replica
//! started on any data dir writes that material into its dir before opening it, so it needs
//! only the KEK (a copy of `kek-<id>.key`, or the unlock key with autolock). Each replica then
//! issues its own server certificate in memory once unlocked; nothing sealed is ever opened
//! outside a replica.
//!
//! # Security
//! etcd holds no plaintext secret: values and private keys that can sign are sealed under the
//! data key, whose wrapping needs the KEK. The unlock-only identity is in the clear, as it is in
//! a data dir: it is valid for `unlock.hush.invalid` alone.

use crate::layout::DataDir;
use crate::store::etcd::{EtcdConfig, EtcdStore, EtcdTls};
use crate::store::{Expect, Store, StoreError, Txn};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("{0} already holds a vault: serve it with `hush vault serve --store {0}`, or init under another prefix")]
    Occupied(String),
    #[error("{0} holds no vault: run `hush vault init --store {0}` once first")]
    Vacant(String),
    #[error(
        "data dir {0} holds an embedded store (store.redb): it belongs to a vault without etcd; use another data dir (or `hush vault migrate` to move it)"
    )]
    EmbeddedDataDir(String),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Store key → the data dir file it mirrors. The keyring comes last: a dir counts as
/// initialised once it exists, so it is written after everything it refers to.
fn shared_files(dir: &DataDir) -> [(&'static str, PathBuf); 5] {
    [
        ("cluster/ca/cert", dir.ca_cert()),
        ("cluster/ca/key", dir.ca_key()),
        ("cluster/unlock/cert", dir.unlock_cert()),
        ("cluster/unlock/key", dir.unlock_key()),
        (KEYRING_KEY, dir.keyring()),
    ]
}

pub const KEYRING_KEY: &str = "cluster/keyring";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReplicaError + '_ {
    move |error| ReplicaError::Io { path: path.display().to_string(), error }
}

/// Fails if `store` already holds a vault (checked before `init` writes anything).
pub async fn ensure_vacant(store: &dyn Store, url: &str) -> Result<(), ReplicaError> {
    match store.get(KEYRING_KEY).await? {
        Some(_) => Err(ReplicaError::Occupied(url.to_string())),
        None => Ok(()),
    }
}

/// Publishes a freshly initialised dir's shared material, all or nothing, create-only.
pub async fn publish(dir: &DataDir, store: &dyn Store, url: &str) -> Result<(), ReplicaError> {
    publish_with(dir, store, url, Txn::new()).await
}

/// [`publish`], with `txn`'s operations in the same transaction (`vault migrate` removes its
/// marker so).
pub async fn publish_with(dir: &DataDir, store: &dyn Store, url: &str, mut txn: Txn) -> Result<(), ReplicaError> {
    for (key, path) in shared_files(dir) {
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        txn = txn.check(key, Expect::Absent).put(key, bytes);
    }
    match store.commit(txn).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => Err(ReplicaError::Occupied(url.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Publishes the keyring again after `rotate-key` re-wrapped the data key.
pub async fn publish_keyring(dir: &DataDir, store: &dyn Store) -> Result<(), ReplicaError> {
    let bytes = std::fs::read(dir.keyring()).map_err(io(&dir.keyring()))?;
    store.commit(Txn::new().put(KEYRING_KEY, bytes)).await?;
    Ok(())
}

/// Writes the shared material from `store` into `dir` (made 0700 if missing), replacing what
/// an earlier start left there: etcd is the one copy that counts.
pub async fn fetch(dir: &DataDir, store: &dyn Store, url: &str) -> Result<(), ReplicaError> {
    if dir.store().exists() {
        return Err(ReplicaError::EmbeddedDataDir(dir.root().display().to_string()));
    }
    let mut files = Vec::new();
    for (key, path) in shared_files(dir) {
        let entry = store.get(key).await?.ok_or_else(|| ReplicaError::Vacant(url.to_string()))?;
        files.push((path, entry.value));
    }
    crate::fsutil::create_private_dir(dir.root()).map_err(io(dir.root()))?;
    crate::fsutil::create_private_dir(&dir.ca_dir()).map_err(io(&dir.ca_dir()))?;
    for (path, bytes) in files {
        crate::fsutil::write_private_atomic(&path, &bytes).map_err(io(&path))?;
    }
    Ok(())
}

/// This replica's id: made at its first start and kept in `DATA_DIR/replica-id`. It names the
/// replica's audit chain in the store.
pub fn replica_id(dir: &DataDir) -> Result<String, ReplicaError> {
    let path = dir.root().join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(ReplicaError::Io { path: path.display().to_string(), error }),
    }
    let id = crate::model::new_id();
    crate::fsutil::write_private_atomic(&path, id.as_bytes()).map_err(io(&path))?;
    Ok(id)
}

/// Where each replica says agents reach it: `cluster/advertise/<replica id>` → JSON list of
/// `HOST:PORT`. A join token minted by any replica carries them all ([`advertised`]). Each
/// entry lives under its replica's etcd lease (`cluster::presence`): a replica that is gone
/// is not listed once its lease ends.
pub const ADVERTISE_PREFIX: &str = "cluster/advertise/";

/// The addresses this replica is reached at: each `--advertise-addr` (with the listening port
/// when it names none), or the listening address itself when none is given and it is not a
/// wildcard.
pub fn advertise_addrs(advertise: &[String], listening: std::net::SocketAddr) -> Vec<String> {
    let mut addrs: Vec<String> = advertise
        .iter()
        .map(|a| if hush_proto::token::valid_addr(a) { a.clone() } else { format!("{a}:{}", listening.port()) })
        .filter(|a| hush_proto::token::valid_addr(a))
        .collect();
    if advertise.is_empty() && !listening.ip().is_unspecified() {
        addrs.push(listening.to_string());
    }
    addrs
}

/// Records `addrs` as this replica's (replacing what an earlier start recorded); the replica's
/// presence then keeps it under its lease.
pub async fn publish_advertised(store: &dyn Store, replica: &str, addrs: &[String]) -> Result<(), ReplicaError> {
    let value = serde_json::to_vec(addrs).expect("addresses serialise");
    store.commit(Txn::new().put(format!("{ADVERTISE_PREFIX}{replica}"), value)).await?;
    Ok(())
}

/// Every replica's advertised addresses, in replica id order, each once.
pub async fn advertised(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    let mut all: Vec<String> = Vec::new();
    for entry in store.range(ADVERTISE_PREFIX).await?.entries {
        for addr in serde_json::from_slice::<Vec<String>>(&entry.value).unwrap_or_default() {
            if !all.contains(&addr) {
                all.push(addr);
            }
        }
    }
    Ok(all)
}

/// `--store` and the TLS files for etcd, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct StoreArgs {
    pub store: Option<String>,
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
}

impl StoreArgs {
    /// The etcd store asked for, or `None` for the embedded one.
    pub fn etcd(&self) -> Result<Option<EtcdConfig>, StoreError> {
        let Some(url) = &self.store else {
            if self.etcd_ca.is_some() || self.etcd_cert.is_some() || self.etcd_key.is_some() {
                return Err(StoreError::Config("--etcd-ca/--etcd-cert/--etcd-key need --store etcd://...".into()));
            }
            return Ok(None);
        };
        let mut config = EtcdConfig::parse(url)?;
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| StoreError::Config(format!("cannot read {}: {e}", path.display())))
        };
        config.tls = match (&self.etcd_ca, &self.etcd_cert, &self.etcd_key) {
            (None, None, None) => None,
            (Some(ca), None, None) => Some(EtcdTls { ca_pem: read(ca)?, identity: None }),
            (Some(ca), Some(cert), Some(key)) => {
                Some(EtcdTls { ca_pem: read(ca)?, identity: Some((read(cert)?, read(key)?)) })
            }
            _ => {
                return Err(StoreError::Config(
                    "TLS to etcd needs --etcd-ca, and --etcd-cert with --etcd-key for a client certificate".into(),
                ));
            }
        };
        Ok(Some(config))
    }
}

/// Connects to etcd; when it cannot, the error names the URL and why.
pub async fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
    EtcdStore::connect(config).await
}
