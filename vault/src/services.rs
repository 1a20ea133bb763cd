//! Services: named sets of secret and config references. A task runs as one service and gets
//! exactly the files its service references.
//!
//! Store layout: `service/obj/ID` → [`ServiceRecord`], `service/name/NAME` → ID, and
//! `service/epoch`, rewritten by every service change so that a secret removal can be made
//! conditional on "no service changed since I checked that none uses it".

use crate::model::{self, Kind};
use crate::objects::{Objects, VaultError};
use crate::spec::{self, Reference, SpecError};
use crate::store::{Entry, Expect, Store, StoreError, Txn};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const EPOCH_KEY: &str = "service/epoch";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Object(#[from] VaultError),
    #[error("service {0} already exists")]
    NameTaken(String),
    #[error("service {0} not found")]
    NotFound(String),
    #[error("service {0} has no {1} reference {2:?}")]
    NoSuchReference(String, Kind, String),
    #[error("record {0} is unreadable")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A reference with its source resolved to an object ID when the service was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundReference {
    #[serde(flatten)]
    pub reference: Reference,
    pub object_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub secrets: Vec<BoundReference>,
    pub configs: Vec<BoundReference>,
}

impl ServiceRecord {
    pub fn references(&self, kind: Kind) -> &[BoundReference] {
        match kind {
            Kind::Secret => &self.secrets,
            Kind::Config => &self.configs,
        }
    }
}

pub(crate) fn obj_key(id: &str) -> String {
    format!("service/obj/{id}")
}
fn name_key(name: &str) -> String {
    format!("service/name/{name}")
}
fn decode(entry: &Entry) -> Result<ServiceRecord, ServiceError> {
    serde_json::from_slice(&entry.value).map_err(|_| ServiceError::Corrupt(entry.key.clone()))
}
fn epoch_value() -> Vec<u8> {
    Utc::now().to_rfc3339().into_bytes()
}

pub struct Services {
    store: Arc<dyn Store>,
    objects: Arc<Objects>,
}

impl Services {
    pub fn new(objects: Arc<Objects>) -> Self {
        Self { store: objects.store().clone(), objects }
    }

    /// Parses SPECs and resolves each source by its exact name (as Docker's CLI: never an ID);
    /// fails if any is missing.
    async fn bind(&self, kind: Kind, specs: &[String]) -> Result<Vec<BoundReference>, ServiceError> {
        let mut bound = Vec::with_capacity(specs.len());
        for text in specs {
            let reference = spec::parse_reference(kind, text)?;
            let object = self.objects.find_by_name(kind, &reference.source).await?.record;
            bound.push(BoundReference { reference, object_id: object.id });
        }
        Ok(bound)
    }

    fn check_targets(record: &ServiceRecord) -> Result<(), ServiceError> {
        spec::check_unique_targets(record.secrets.iter().chain(&record.configs).map(|b| &b.reference))?;
        Ok(())
    }

    pub async fn create(
        &self,
        name: &str,
        secrets: &[String],
        configs: &[String],
        labels: BTreeMap<String, String>,
    ) -> Result<ServiceRecord, ServiceError> {
        model::validate_name(name).map_err(VaultError::from)?;
        model::validate_labels(&labels).map_err(VaultError::from)?;
        let now = Utc::now();
        let record = ServiceRecord {
            id: model::new_id(),
            name: name.to_string(),
            labels,
            created_at: now,
            updated_at: now,
            secrets: self.bind(Kind::Secret, secrets).await?,
            configs: self.bind(Kind::Config, configs).await?,
        };
        Self::check_targets(&record)?;
        let txn = Txn::new()
            .check(name_key(name), Expect::Absent)
            .put(name_key(name), record.id.clone().into_bytes())
            .put(obj_key(&record.id), serde_json::to_vec(&record).expect("record serialises"))
            .put(EPOCH_KEY, epoch_value());
        match self.store.commit(txn).await {
            Ok(_) => Ok(record),
            Err(StoreError::Conflict { .. }) => Err(ServiceError::NameTaken(name.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list(&self) -> Result<Vec<ServiceRecord>, ServiceError> {
        let mut records =
            self.store.range("service/obj/").await?.entries.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    pub async fn get(&self, id: &str) -> Result<Option<(ServiceRecord, u64)>, ServiceError> {
        match self.store.get(&obj_key(id)).await? {
            Some(entry) => Ok(Some((decode(&entry)?, entry.mod_revision))),
            None => Ok(None),
        }
    }

    /// Full ID, then exact name, then unique ID prefix (as objects).
    pub async fn find(&self, reference: &str) -> Result<(ServiceRecord, u64), ServiceError> {
        if let Some(found) = self.get(reference).await? {
            return Ok(found);
        }
        if let Some(entry) = self.store.get(&name_key(reference)).await?
            && let Some(found) = self.get(&String::from_utf8_lossy(&entry.value)).await?
        {
            return Ok(found);
        }
        if model::is_id_prefix(reference) {
            let matches = self.store.range(&obj_key(reference)).await?.entries;
            if let [entry] = matches.as_slice() {
                return Ok((decode(entry)?, entry.mod_revision));
            }
        }
        Err(ServiceError::NotFound(reference.to_string()))
    }

    pub async fn remove(&self, reference: &str) -> Result<ServiceRecord, ServiceError> {
        let (record, revision) = self.find(reference).await?;
        let mut txn = Txn::new()
            .check(obj_key(&record.id), Expect::At(revision))
            .delete(obj_key(&record.id))
            .delete(name_key(&record.name))
            .put(EPOCH_KEY, epoch_value());
        // Its tasks go with it: their files disappear from their nodes.
        for task in crate::tasks::Tasks::new(self.store.clone()).list().await? {
            if task.service_id == record.id {
                txn = txn.delete(crate::tasks::task_key(&task.id));
            }
        }
        self.store.commit(txn).await?;
        Ok(record)
    }

    /// `service update --secret-add/--secret-rm/--config-add/--config-rm`.
    pub async fn update(
        &self,
        reference: &str,
        secret_add: &[String],
        secret_rm: &[String],
        config_add: &[String],
        config_rm: &[String],
    ) -> Result<ServiceRecord, ServiceError> {
        let (mut record, revision) = self.find(reference).await?;
        for (kind, removals) in [(Kind::Secret, secret_rm), (Kind::Config, config_rm)] {
            let list = match kind {
                Kind::Secret => &mut record.secrets,
                Kind::Config => &mut record.configs,
            };
            for name in removals {
                let before = list.len();
                list.retain(|b| &b.reference.source != name && &b.reference.target != name);
                if list.len() == before {
                    return Err(ServiceError::NoSuchReference(record.name.clone(), kind, name.clone()));
                }
            }
        }
        record.secrets.extend(self.bind(Kind::Secret, secret_add).await?);
        record.configs.extend(self.bind(Kind::Config, config_add).await?);
        self.save(record, revision).await
    }

    /// Writes a changed service if nobody changed it since it was read at `revision`.
    async fn save(&self, mut record: ServiceRecord, revision: u64) -> Result<ServiceRecord, ServiceError> {
        Self::check_targets(&record)?;
        record.updated_at = Utc::now();
        let txn = Txn::new()
            .check(obj_key(&record.id), Expect::At(revision))
            .put(obj_key(&record.id), serde_json::to_vec(&record).expect("record serialises"))
            .put(EPOCH_KEY, epoch_value());
        self.store.commit(txn).await?;
        Ok(record)
    }

    /// Replaces both reference lists (compose re-deploys): running tasks follow live.
    pub async fn replace(
        &self,
        reference: &str,
        secrets: &[String],
        configs: &[String],
    ) -> Result<ServiceRecord, ServiceError> {
        let (mut record, revision) = self.find(reference).await?;
        record.secrets = self.bind(Kind::Secret, secrets).await?;
        record.configs = self.bind(Kind::Config, configs).await?;
        self.save(record, revision).await
    }

    /// Names of services referencing the object, and the check that keeps that answer true.
    pub async fn users_of(&self, kind: Kind, object_id: &str) -> Result<(Vec<String>, (String, Expect)), VaultError> {
        let guard = match self.store.get(EPOCH_KEY).await? {
            Some(entry) => Expect::At(entry.mod_revision),
            None => Expect::Absent,
        };
        let services =
            self.list().await.map_err(|e| VaultError::Corrupt { key: "service/".into(), reason: e.to_string() })?;
        let users = services
            .into_iter()
            .filter(|s| s.references(kind).iter().any(|b| b.object_id == object_id))
            .map(|s| s.name)
            .collect();
        Ok((users, (EPOCH_KEY.to_string(), guard)))
    }
}
