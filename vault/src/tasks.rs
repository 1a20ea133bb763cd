//! Tasks: running instances of a service on a node. A task exists in the store from
//! `StartTask` to `EndTask` (or its node's removal); the node's assignment carries its files.
//! Which node started a task is kept longer ([`TaskOwner`], [`OWNER_DAYS`]): a node's audit
//! reports may arrive after the task ended, and are accepted only about its own tasks.

use crate::model;
use crate::store::{Entry, Store, StoreError, Txn};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub name: String,
    pub service_id: String,
    pub service_name: String,
    pub node_id: String,
    pub created_at: DateTime<Utc>,
    /// The container this task is (Docker, Podman, Swarm); absent for `hush run` tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

/// A container task's container, as the agent verified it through the Engine API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
}

pub fn task_key(id: &str) -> String {
    format!("task/{id}")
}

/// How long the owner of a task is remembered after it started.
pub const OWNER_DAYS: i64 = 7;

/// Who started a task, kept after it ends (store key `task-owner/NODE/TASK`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOwner {
    pub node_id: String,
    pub service_name: String,
    pub started_at: DateTime<Utc>,
}

fn owner_key(node_id: &str, task_id: &str) -> String {
    format!("task-owner/{node_id}/{task_id}")
}

/// Every task owner of one node.
pub fn owner_prefix(node_id: &str) -> String {
    format!("task-owner/{node_id}/")
}

fn decode(entry: &Entry) -> Result<TaskRecord, StoreError> {
    serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt(format!("{}: {e}", entry.key)))
}

pub struct Tasks {
    store: Arc<dyn Store>,
}

impl Tasks {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn list(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.store.range("task/").await?.entries.iter().map(decode).collect()
    }

    pub async fn of_node(&self, node_id: &str) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self.list().await?.into_iter().filter(|t| t.node_id == node_id).collect())
    }

    /// Records a task; `name` defaults to `SERVICE.<first 12 characters of the ID>`.
    pub async fn start(
        &self,
        node_id: &str,
        service_id: &str,
        service_name: &str,
        name: &str,
        container: Option<Container>,
    ) -> Result<TaskRecord, StoreError> {
        self.start_if(Txn::new(), node_id, service_id, service_name, name, container).await
    }

    /// [`Tasks::start`] in a transaction that also holds `checks` (e.g. that the node and the
    /// service are still as they were when placement allowed the task).
    pub async fn start_if(
        &self,
        checks: Txn,
        node_id: &str,
        service_id: &str,
        service_name: &str,
        name: &str,
        container: Option<Container>,
    ) -> Result<TaskRecord, StoreError> {
        let id = model::new_id();
        let name = if name.is_empty() { format!("{service_name}.{}", &id[..12]) } else { name.to_string() };
        let record = TaskRecord {
            id: id.clone(),
            name,
            service_id: service_id.to_string(),
            service_name: service_name.to_string(),
            node_id: node_id.to_string(),
            created_at: Utc::now(),
            container,
        };
        let owner = TaskOwner {
            node_id: node_id.to_string(),
            service_name: service_name.to_string(),
            started_at: record.created_at,
        };
        self.store
            .commit(
                checks
                    .put(task_key(&id), serde_json::to_vec(&record).expect("record serialises"))
                    .put(owner_key(node_id, &id), serde_json::to_vec(&owner).expect("owner serialises")),
            )
            .await?;
        Ok(record)
    }

    /// Forgets tasks of `node_id` matching `ended`; returns them.
    pub async fn end_where(
        &self,
        node_id: &str,
        ended: impl Fn(&TaskRecord) -> bool,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let gone: Vec<_> = self.of_node(node_id).await?.into_iter().filter(|t| ended(t)).collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let mut keys: Vec<String> = gone.iter().map(|t| task_key(&t.id)).collect();
        // Owners older than OWNER_DAYS go too, so the records stay bounded per node.
        let cutoff = Utc::now() - chrono::Duration::days(OWNER_DAYS);
        for entry in self.store.range(&owner_prefix(node_id)).await?.entries {
            if serde_json::from_slice::<TaskOwner>(&entry.value).is_ok_and(|o| o.started_at < cutoff) {
                keys.push(entry.key);
            }
        }
        // Each task ends on its own, so the deletes go in transactions of at most
        // TASKS_PER_TXN (etcd allows 128 operations in one). If one fails, those before it
        // stand; the rest end at the node's next SyncTasks.
        for chunk in keys.chunks(crate::nodes::TASKS_PER_TXN) {
            self.store.commit(chunk.iter().fold(Txn::new(), |txn, key| txn.delete(key.clone()))).await?;
        }
        Ok(gone)
    }

    /// The task's owner, if `node_id` started it (within [`OWNER_DAYS`]).
    pub async fn owner(&self, node_id: &str, task_id: &str) -> Result<Option<TaskOwner>, StoreError> {
        let Some(entry) = self.store.get(&owner_key(node_id, task_id)).await? else { return Ok(None) };
        serde_json::from_slice(&entry.value).map(Some).map_err(|e| StoreError::Corrupt(format!("{}: {e}", entry.key)))
    }
}
