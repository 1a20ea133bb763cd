//! Nodes: the join token, joining (a signed node certificate in exchange for a valid token),
//! the node list and removal. A removed node's certificate is refused from then on, because
//! every node call checks that its record still exists.

use crate::ca::{CertificateAuthority, NODE_OU};
use crate::model;
use crate::objects::{Objects, VaultError};
use crate::store::{Entry, Expect, Store, StoreError, Txn};
use crate::tasks::task_key;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const TOKEN_KEY: &str = "cluster/join-token";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid join token: it is malformed")]
    MalformedToken,
    #[error("invalid join token: it was issued for another vault (CA fingerprint mismatch)")]
    OtherVault,
    #[error("invalid join token: it is wrong or has been rotated (get the current one with `hush node join-token`)")]
    WrongToken,
    #[error("invalid certificate request: {0}")]
    Csr(String),
    #[error("node {0} not found")]
    NotFound(String),
    #[error("node {0} has been removed from this vault")]
    Removed(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub joined_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

fn node_key(id: &str) -> String {
    format!("node/{id}")
}
fn decode(entry: &Entry) -> Result<NodeRecord, StoreError> {
    serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt(format!("{}: {e}", entry.key)))
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Nodes with an open assignment stream, and how many (an agent may briefly have two).
/// In memory: after a vault restart every node is Down until its agent reconnects.
#[derive(Debug, Default)]
pub struct Presence(Mutex<HashMap<String, usize>>);

pub struct Nodes {
    store: Arc<dyn Store>,
    objects: Arc<Objects>,
    ca_fingerprint: String,
    presence: Arc<Presence>,
}

impl Nodes {
    pub fn new(objects: Arc<Objects>, ca_fingerprint: String, presence: Arc<Presence>) -> Self {
        Self { store: objects.store().clone(), objects, ca_fingerprint, presence }
    }

    /// The current join token, made on first use; `rotate` replaces it (old tokens stop working).
    pub async fn join_token(&self, rotate: bool) -> Result<String, NodeError> {
        if !rotate && let Some(entry) = self.store.get(TOKEN_KEY).await? {
            let secret = self.objects.open_internal(TOKEN_KEY, &entry.value)?;
            return Ok(hush_proto::token::format(
                &self.ca_fingerprint,
                &String::from_utf8_lossy(secret.expose_secret()),
            ));
        }
        // 25 base-36 characters: 128 random bits.
        let secret = model::new_id();
        let sealed = self.objects.seal_internal(TOKEN_KEY, secret.as_bytes());
        self.store.commit(Txn::new().put(TOKEN_KEY, sealed)).await?;
        Ok(hush_proto::token::format(&self.ca_fingerprint, &secret))
    }

    /// Checks the token, records the node and signs its certificate.
    pub async fn join(
        &self,
        ca: &CertificateAuthority,
        token: &str,
        csr_pem: &str,
        hostname: &str,
    ) -> Result<(NodeRecord, String), NodeError> {
        let (fingerprint, secret) = hush_proto::token::split(token).ok_or(NodeError::MalformedToken)?;
        if !fingerprint.eq_ignore_ascii_case(&self.ca_fingerprint) {
            return Err(NodeError::OtherVault);
        }
        let entry = self.store.get(TOKEN_KEY).await?.ok_or(NodeError::WrongToken)?;
        let expected = self.objects.open_internal(TOKEN_KEY, &entry.value)?;
        if !constant_time_eq(expected.expose_secret(), secret.as_bytes()) {
            return Err(NodeError::WrongToken);
        }
        let now = Utc::now();
        let name = if hostname.is_empty() { "node".to_string() } else { hostname.chars().take(64).collect() };
        let record = NodeRecord { id: model::new_id(), name, joined_at: now, last_seen: now };
        let cert_pem = ca.sign_request(csr_pem, &record.id, NODE_OU).map_err(|e| NodeError::Csr(e.to_string()))?;
        let txn = Txn::new()
            .check(node_key(&record.id), Expect::Absent)
            .put(node_key(&record.id), serde_json::to_vec(&record).expect("record serialises"));
        self.store.commit(txn).await?;
        Ok((record, cert_pem))
    }

    /// The node behind a node certificate, if it has not been removed.
    pub async fn get(&self, id: &str) -> Result<NodeRecord, NodeError> {
        match self.store.get(&node_key(id)).await? {
            Some(entry) => Ok(decode(&entry)?),
            None => Err(NodeError::Removed(id.to_string())),
        }
    }

    pub async fn list(&self) -> Result<Vec<NodeRecord>, NodeError> {
        let mut nodes = self.store.range("node/").await?.entries.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        Ok(nodes)
    }

    pub fn is_connected(&self, id: &str) -> bool {
        self.presence.0.lock().expect("not poisoned").get(id).is_some_and(|n| *n > 0)
    }

    /// Marks a stream open or closed and records when the node was last seen.
    pub async fn set_connected(&self, id: &str, open: bool) -> Result<(), NodeError> {
        {
            let mut connected = self.presence.0.lock().expect("not poisoned");
            let count = connected.entry(id.to_string()).or_default();
            *count = if open { *count + 1 } else { count.saturating_sub(1) };
        }
        if let Some(entry) = self.store.get(&node_key(id)).await? {
            let mut record = decode(&entry)?;
            record.last_seen = Utc::now();
            let txn = Txn::new()
                .check(node_key(id), Expect::At(entry.mod_revision))
                .put(node_key(id), serde_json::to_vec(&record).expect("record serialises"));
            // A concurrent change (removal) wins; last-seen is best effort.
            let _ = self.store.commit(txn).await;
        }
        Ok(())
    }

    /// Full ID, exact name (if unique), or unique ID prefix.
    pub async fn find(&self, reference: &str) -> Result<NodeRecord, NodeError> {
        let nodes = self.list().await?;
        if let Some(node) = nodes.iter().find(|n| n.id == reference) {
            return Ok(node.clone());
        }
        let by_name: Vec<_> = nodes.iter().filter(|n| n.name == reference).collect();
        if let [node] = by_name.as_slice() {
            return Ok((*node).clone());
        }
        let by_prefix: Vec<_> = nodes.iter().filter(|n| n.id.starts_with(reference)).collect();
        match by_prefix.as_slice() {
            [node] => Ok((*node).clone()),
            _ => Err(NodeError::NotFound(reference.to_string())),
        }
    }

    /// Removes the node and its tasks. Its streams end and its certificate is refused.
    pub async fn remove(&self, reference: &str) -> Result<NodeRecord, NodeError> {
        let node = self.find(reference).await?;
        let mut txn = Txn::new().delete(node_key(&node.id));
        for task in crate::tasks::Tasks::new(self.store.clone()).of_node(&node.id).await? {
            txn = txn.delete(task_key(&task.id));
        }
        self.store.commit(txn).await?;
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
