//! Tasks: running instances of a service on a node. A task exists in the store from
//! `StartTask` to `EndTask` (or its node's removal); the node's assignment carries its files.

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
        self.store.commit(checks.put(task_key(&id), serde_json::to_vec(&record).expect("record serialises"))).await?;
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
        let txn = gone.iter().fold(Txn::new(), |txn, t| txn.delete(task_key(&t.id)));
        self.store.commit(txn).await?;
        Ok(gone)
    }
}
