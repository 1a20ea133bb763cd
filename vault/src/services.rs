//! Services: named sets of secret and config references, and the placement constraints that
//! say which nodes may run them. A task runs as one service and gets exactly the files its
//! service references.
//!
//! Store layout: `service/obj/ID` → [`ServiceRecord`], `service/name/NAME` → ID, and
//! `service/epoch`, rewritten by every service change so that a secret removal can be made
//! conditional on "no service changed since I checked that none uses it".

use crate::model::{self, Kind};
use crate::nodes::{NodeRecord, node_key};
use crate::objects::{Objects, VaultError};
use crate::spec::{self, Constraint, Reference, SpecError};
use crate::store::{Entry, Expect, Store, StoreError, Txn};
use crate::tasks::{TaskRecord, Tasks, task_key};
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
    #[error("service {0} has no constraint {1}")]
    NoSuchConstraint(String, String),
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
    /// Swarm placement constraints, all of which must hold (see [`crate::placement::may_run`]).
    #[serde(default)]
    pub constraints: Vec<Constraint>,
}

/// `service update`: references and constraints to add and remove (removals first).
#[derive(Debug, Clone, Copy, Default)]
pub struct Changes<'a> {
    pub secret_add: &'a [String],
    pub secret_rm: &'a [String],
    pub config_add: &'a [String],
    pub config_rm: &'a [String],
    pub constraint_add: &'a [String],
    /// Each must be one of the service's constraints (compared in canonical spelling).
    pub constraint_rm: &'a [String],
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

    /// Parses constraints, dropping repeats (the same constraint twice is one constraint).
    fn constraints(texts: &[String]) -> Result<Vec<Constraint>, ServiceError> {
        let mut constraints: Vec<Constraint> = Vec::with_capacity(texts.len());
        for text in texts {
            let constraint = spec::parse_constraint(text)?;
            if !constraints.contains(&constraint) {
                constraints.push(constraint);
            }
        }
        Ok(constraints)
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
        constraints: &[String],
    ) -> Result<ServiceRecord, ServiceError> {
        model::validate_name(name).map_err(VaultError::from)?;
        model::validate_labels(&labels).map_err(VaultError::from)?;
        let constraints = Self::constraints(constraints)?;
        let now = Utc::now();
        let record = ServiceRecord {
            id: model::new_id(),
            name: name.to_string(),
            labels,
            created_at: now,
            updated_at: now,
            secrets: self.bind(Kind::Secret, secrets).await?,
            configs: self.bind(Kind::Config, configs).await?,
            constraints,
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
        for task in Tasks::new(self.store.clone()).list().await? {
            if task.service_id == record.id {
                txn = txn.delete(task_key(&task.id));
            }
        }
        self.store.commit(txn).await?;
        Ok(record)
    }

    /// `service update --secret-add/--secret-rm/--config-add/--config-rm/--constraint-add/--constraint-rm`.
    pub async fn update(
        &self,
        reference: &str,
        changes: Changes<'_>,
    ) -> Result<(ServiceRecord, Vec<TaskRecord>), ServiceError> {
        let Changes { secret_add, secret_rm, config_add, config_rm, constraint_add, constraint_rm } = changes;
        let (mut record, revision) = self.find(reference).await?;
        for text in constraint_rm {
            let constraint = spec::parse_constraint(text)?;
            let before = record.constraints.len();
            record.constraints.retain(|c| c != &constraint);
            if record.constraints.len() == before {
                return Err(ServiceError::NoSuchConstraint(record.name.clone(), constraint.to_string()));
            }
        }
        for constraint in Self::constraints(constraint_add)? {
            if !record.constraints.contains(&constraint) {
                record.constraints.push(constraint);
            }
        }
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

    /// Writes a changed service if nobody changed it since it was read at `revision`. Its tasks
    /// on nodes its constraints now exclude are ended in the same transaction (their files leave
    /// those nodes), as Swarm's constraint enforcer does; they are returned.
    async fn save(
        &self,
        mut record: ServiceRecord,
        revision: u64,
    ) -> Result<(ServiceRecord, Vec<TaskRecord>), ServiceError> {
        Self::check_targets(&record)?;
        record.updated_at = Utc::now();
        let mut txn = Txn::new()
            .check(obj_key(&record.id), Expect::At(revision))
            .put(obj_key(&record.id), serde_json::to_vec(&record).expect("record serialises"))
            .put(EPOCH_KEY, epoch_value());
        let mut ended = Vec::new();
        let tasks =
            if record.constraints.is_empty() { Vec::new() } else { Tasks::new(self.store.clone()).list().await? };
        for task in tasks {
            if task.service_id != record.id {
                continue;
            }
            let Some(entry) = self.store.get(&node_key(&task.node_id)).await? else { continue };
            let node: NodeRecord =
                serde_json::from_slice(&entry.value).map_err(|_| ServiceError::Corrupt(entry.key.clone()))?;
            if crate::placement::may_run(&node, &record).is_err() {
                txn = txn.check(entry.key.clone(), Expect::At(entry.mod_revision)).delete(task_key(&task.id));
                ended.push(task);
            }
        }
        self.store.commit(txn).await?;
        Ok((record, ended))
    }

    /// Replaces both reference lists and the constraints (compose re-deploys): running tasks
    /// follow live.
    pub async fn replace(
        &self,
        reference: &str,
        secrets: &[String],
        configs: &[String],
        constraints: &[String],
    ) -> Result<(ServiceRecord, Vec<TaskRecord>), ServiceError> {
        let (mut record, revision) = self.find(reference).await?;
        record.constraints = Self::constraints(constraints)?;
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
