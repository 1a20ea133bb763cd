//! One vault's runtime state: its store, its key hierarchy and whether it is locked.
//!
//! When each operation is allowed: `objects()` only while unlocked; `unlock` only while
//! locked (a vault without autolock is unlocked from the start); `rotate_key` while unlocked.

use crate::audit::AuditLog;
use crate::ca::CertificateAuthority;
use crate::crypto::Key;
use crate::keyring::{Keyring, KeyringError, UnlockKey};
use crate::layout::DataDir;
use crate::nodes::{Nodes, Presence};
use crate::objects::Objects;
use crate::services::Services;
use crate::store::Store;
use crate::store::redb::RedbStore;
use crate::tasks::Tasks;
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
}

pub struct Vault {
    audit: Arc<AuditLog>,
    /// Set when the server begins to stop: long-lived streams end so shutdown can complete.
    stopping: tokio::sync::watch::Sender<bool>,
    store: Arc<dyn Store>,
    ca: CertificateAuthority,
    presence: Arc<Presence>,
    keyring: tokio::sync::Mutex<Keyring>,
    unlocked: RwLock<Option<Unlocked>>,
    autolock: bool,
    ca_fingerprint: String,
}

impl Vault {
    /// Opens an initialised data dir. Unlocks at once unless the vault is autolocked.
    pub fn open(dir: &DataDir) -> Result<Self, VaultStateError> {
        let keyring = Keyring::load(dir)?;
        let ca = CertificateAuthority::load(dir).map_err(|e| VaultStateError::Open(e.to_string()))?;
        let ca_fingerprint = ca.fingerprint().map_err(|e| VaultStateError::Open(e.to_string()))?;
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.store()).map_err(|e| VaultStateError::Open(e.to_string()))?);
        let audit = Arc::new(
            AuditLog::open(&dir.audit_dir(), store.clone()).map_err(|e| VaultStateError::Open(e.to_string()))?,
        );
        let autolock = keyring.is_autolock();
        let unlocked = if autolock {
            None
        } else {
            let data_key = keyring.open_with_key_file()?;
            Some(Unlocked { objects: Arc::new(Objects::new(store.clone(), data_key.clone())), data_key })
        };
        Ok(Self {
            audit,
            stopping: tokio::sync::watch::Sender::new(false),
            store,
            ca,
            presence: Arc::default(),
            keyring: tokio::sync::Mutex::new(keyring),
            unlocked: RwLock::new(unlocked),
            autolock,
            ca_fingerprint,
        })
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

    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
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
        let objects = Arc::new(Objects::new(self.store.clone(), data_key.clone()));
        *self.unlocked.write().expect("lock poisoned only by a panic") = Some(Unlocked { objects, data_key });
        Ok(())
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
        Ok(unlock)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
