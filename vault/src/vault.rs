//! One vault's runtime state: its store, its key hierarchy and whether it is locked.
//!
//! When each operation is allowed: `objects()` and `ca()` only while unlocked; `unlock` only
//! while locked (a vault without autolock is unlocked from the start); `rotate_key` while
//! unlocked. Unlocking opens the sealed CA and server keys and switches the TLS identity.

use crate::audit::AuditLog;
use crate::ca::{CertificateAuthority, SERVER_KEY_PURPOSE};
use crate::crypto::Key;
use crate::keyring::{Keyring, KeyringError, UnlockKey};
use crate::layout::DataDir;
use crate::nodes::{Nodes, Presence};
use crate::objects::Objects;
use crate::services::Services;
use crate::store::Store;
use crate::store::redb::RedbStore;
use crate::tasks::Tasks;
use crate::tls::{Identities, certified_key};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum VaultStateError {
    #[error("vault is locked: run `hush vault unlock` and enter the unlock key")]
    Locked,
    #[error("vault is already unlocked")]
    AlreadyUnlocked,
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("{0}")]
    Open(String),
}

struct Unlocked {
    objects: Arc<Objects>,
    data_key: Key,
    ca: Arc<CertificateAuthority>,
}

pub struct Vault {
    audit: Arc<AuditLog>,
    /// Set when the server begins to stop: long-lived streams end so shutdown can complete.
    stopping: tokio::sync::watch::Sender<bool>,
    store: Arc<dyn Store>,
    dir: DataDir,
    ca_cert_pem: String,
    tls: Arc<Identities>,
    presence: Arc<Presence>,
    /// What each node has been sent and audited as `deliver` (see [`crate::deliveries`]).
    delivered: crate::deliveries::Delivered,
    keyring: tokio::sync::Mutex<Keyring>,
    unlocked: RwLock<Option<Unlocked>>,
    autolock: bool,
    ca_fingerprint: String,
    /// A replica on a shared store (etcd): the names its own server certificate is issued
    /// for at unlock, and the keyring is published to the store when it changes.
    replica: Option<Vec<String>>,
    /// Its peers, its leadership and the singleton jobs, once serving (see [`crate::cluster`]).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl Vault {
    /// Opens an initialised data dir. Unlocks at once unless the vault is autolocked.
    pub fn open(dir: &DataDir) -> Result<Self, VaultStateError> {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.store()).map_err(|e| VaultStateError::Open(e.to_string()))?);
        Self::open_on(dir, store, None)
    }

    /// Opens a data dir whose data lives in `store`. With `replica` (the names this replica is
    /// reached by), the server certificate is issued afresh at unlock instead of read from the
    /// dir, so every replica has its own.
    pub fn open_on(
        dir: &DataDir,
        store: Arc<dyn Store>,
        replica: Option<Vec<String>>,
    ) -> Result<Self, VaultStateError> {
        let keyring = Keyring::load(dir)?;
        let open_err = |e: &dyn std::fmt::Display| VaultStateError::Open(e.to_string());
        let read = |path: std::path::PathBuf| {
            std::fs::read(&path).map_err(|e| VaultStateError::Open(format!("{}: {e}", path.display())))
        };
        let ca_cert_pem = String::from_utf8(read(dir.ca_cert())?).map_err(|e| open_err(&e))?;
        let ca_fingerprint = crate::ca::fingerprint_pem(&ca_cert_pem).map_err(|e| open_err(&e))?;
        let unlock_key_pem = zeroize::Zeroizing::new(read(dir.unlock_key())?);
        let tls = Arc::new(Identities::new(
            certified_key(&read(dir.unlock_cert())?, &unlock_key_pem).map_err(|e| open_err(&e))?,
        ));
        let autolock = keyring.is_autolock();
        let data_key = if autolock { None } else { Some(keyring.open_with_key_file()?) };
        // The audit chain is keyed from the data key: a locked vault's log waits for unlock.
        // Replicas sharing a store each keep their own chain, named by the replica's id.
        let audit = match &replica {
            Some(_) => {
                let id = crate::replica::replica_id(dir).map_err(|e| open_err(&e))?;
                let log = Arc::new(
                    AuditLog::open_replica(&dir.audit_dir(), store.clone(), data_key.as_ref(), &id)
                        .map_err(|e| open_err(&e))?,
                );
                log.start_checkpoints(crate::audit::shared::checkpoint_interval());
                log
            }
            None => Arc::new(
                AuditLog::open_with_head(
                    &dir.audit_dir(),
                    store.clone(),
                    data_key.as_ref(),
                    crate::audit::HEAD_KEY.into(),
                )
                .map_err(|e| open_err(&e))?,
            ),
        };
        let vault = Self {
            audit,
            stopping: tokio::sync::watch::Sender::new(false),
            store,
            dir: dir.clone(),
            ca_cert_pem,
            tls,
            presence: Arc::default(),
            delivered: Default::default(),
            keyring: tokio::sync::Mutex::new(keyring),
            unlocked: RwLock::new(None),
            autolock,
            ca_fingerprint,
            replica,
            cluster: std::sync::OnceLock::new(),
        };
        if let Some(data_key) = data_key {
            vault.open_with(data_key)?;
        }
        Ok(vault)
    }

    /// With the data key: opens the sealed CA and server keys, then serves as unlocked.
    fn open_with(&self, data_key: Key) -> Result<(), VaultStateError> {
        let open_err = |e: &dyn std::fmt::Display| VaultStateError::Open(e.to_string());
        let ca = CertificateAuthority::load(&self.dir, &data_key).map_err(|e| open_err(&e))?;
        let server = match &self.replica {
            Some(names) => {
                let issued = ca.issue_server(names).map_err(|e| open_err(&e))?;
                let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
                certified_key(chain.as_bytes(), issued.key_pem.as_bytes()).map_err(|e| open_err(&e))?
            }
            None => self.server_from_dir(&data_key)?,
        };
        let objects = Arc::new(Objects::new(self.store.clone(), data_key.clone()));
        *self.unlocked.write().expect("lock poisoned only by a panic") =
            Some(Unlocked { objects, data_key, ca: Arc::new(ca) });
        self.tls.set_server(server);
        Ok(())
    }

    /// The server identity `init` left in the data dir, its key sealed under the data key.
    fn server_from_dir(&self, data_key: &Key) -> Result<Arc<rustls::sign::CertifiedKey>, VaultStateError> {
        let open_err = |e: &dyn std::fmt::Display| VaultStateError::Open(e.to_string());
        let server_key = crate::keyring::read_sealed(&self.dir.server_key(), data_key, SERVER_KEY_PURPOSE)
            .map_err(|e| open_err(&e))?
            .ok_or_else(|| {
                VaultStateError::Open(format!(
                    "{} does not open with this vault's data key",
                    self.dir.server_key().display()
                ))
            })?;
        let chain = std::fs::read(self.dir.server_cert()).map_err(|e| open_err(&e))?;
        certified_key(&chain, server_key.expose_secret()).map_err(|e| open_err(&e))
    }

    pub fn objects(&self) -> Result<Arc<Objects>, VaultStateError> {
        let guard = self.unlocked.read().expect("lock poisoned only by a panic");
        guard.as_ref().map(|u| u.objects.clone()).ok_or(VaultStateError::Locked)
    }

    pub fn services(&self) -> Result<Services, VaultStateError> {
        Ok(Services::new(self.objects()?))
    }

    pub fn nodes(&self) -> Result<Nodes, VaultStateError> {
        Ok(Nodes::new(self.objects()?, self.ca_fingerprint.clone(), self.presence.clone()))
    }

    pub fn delivered(&self) -> &crate::deliveries::Delivered {
        &self.delivered
    }

    pub fn tasks(&self) -> Tasks {
        Tasks::new(self.store.clone())
    }

    /// Ends long-lived streams (agents reconnect to another replica or when this one is back).
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The CA, to sign with: only while unlocked (its key is sealed under the data key).
    pub fn ca(&self) -> Result<Arc<CertificateAuthority>, VaultStateError> {
        let guard = self.unlocked.read().expect("lock poisoned only by a panic");
        guard.as_ref().map(|u| u.ca.clone()).ok_or(VaultStateError::Locked)
    }

    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The TLS identities the server presents (unlock-only until unlocked).
    pub fn tls_identities(&self) -> Arc<Identities> {
        self.tls.clone()
    }

    pub fn is_locked(&self) -> bool {
        self.unlocked.read().expect("lock poisoned only by a panic").is_none()
    }

    pub fn is_autolock(&self) -> bool {
        self.autolock
    }

    pub fn ca_fingerprint(&self) -> &str {
        &self.ca_fingerprint
    }

    pub async fn unlock(&self, unlock_key: String) -> Result<(), VaultStateError> {
        if !self.is_locked() {
            return Err(VaultStateError::AlreadyUnlocked);
        }
        let keyring = self.keyring.lock().await.clone();
        let unlock_key = zeroize::Zeroizing::new(unlock_key);
        // Argon2id takes a few hundred milliseconds: keep it off the async workers.
        let data_key = tokio::task::spawn_blocking(move || keyring.open_with_unlock_key(&unlock_key))
            .await
            .map_err(|e| VaultStateError::Open(e.to_string()))??;
        self.audit.unlock(&data_key).await.map_err(|e| VaultStateError::Open(e.to_string()))?;
        self.open_with(data_key)
    }

    /// New key-encryption key (and unlock key when autolocked); the data key is re-wrapped.
    pub async fn rotate_key(&self) -> Result<Option<UnlockKey>, VaultStateError> {
        let data_key = {
            let guard = self.unlocked.read().expect("lock poisoned only by a panic");
            guard.as_ref().map(|u| u.data_key.clone()).ok_or(VaultStateError::Locked)?
        };
        let mut guard = self.keyring.lock().await;
        let mut keyring = guard.clone();
        let (keyring, unlock) = tokio::task::spawn_blocking(move || {
            let unlock = keyring.rotate(&data_key);
            (keyring, unlock)
        })
        .await
        .map_err(|e| VaultStateError::Open(e.to_string()))?;
        let unlock = unlock?;
        *guard = keyring;
        if self.replica.is_some() {
            // Every replica reads the keyring from the store when it starts.
            crate::replica::publish_keyring(&self.dir, self.store.as_ref())
                .await
                .map_err(|e| VaultStateError::Open(format!("the new keyring is not in the store: {e}")))?;
        }
        Ok(unlock)
    }

    /// Starts `cluster`'s lease, campaign and jobs for this vault (once: later calls keep the
    /// first).
    pub fn start_cluster(self: &Arc<Self>, cluster: crate::cluster::Cluster) {
        let cluster = Arc::new(cluster);
        if self.cluster.set(cluster.clone()).is_ok() {
            cluster.start(self.clone());
        }
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
