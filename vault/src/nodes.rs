//! Nodes: join tokens and joining (a signed node certificate in exchange for a valid token),
//! node labels (set by admins only), the node list and removal. A removed node's certificate is
//! refused from then on, because every node call checks that its record still exists.

use crate::ca::{CertificateAuthority, NODE_OU};
use crate::join_token::{self, Grant, TokenRecord, TokenRefusal};
use crate::model;
use crate::objects::{Objects, VaultError};
use crate::store::{Entry, Expect, Store, StoreError, Txn};
use crate::tasks::{TaskRecord, task_key};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// How often a join or label update retries when a concurrent change got there first.
const CONTENDED_RETRIES: usize = 16;
/// Tasks deleted per transaction when a node is removed (etcd's limit is 128 operations).
pub const TASKS_PER_TXN: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid join token: it is malformed")]
    MalformedToken,
    #[error("invalid join token: it was issued for another vault (CA fingerprint mismatch)")]
    OtherVault,
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    #[error("invalid certificate request: {0}")]
    Csr(String),
    #[error("node {0} not found")]
    NotFound(String),
    #[error("join token {0} not found (`hush node join-token ls` lists them)")]
    TokenNotFound(String),
    #[error("node {0} has been removed from this vault")]
    Removed(String),
    #[error("key {0} doesn't exist in node's labels")]
    NoSuchLabel(String),
    #[error("too many concurrent changes to node {0}: try again")]
    Contended(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl NodeError {
    /// The join token a refused join presented, by its ID, when the token was a real one.
    pub fn token_id(&self) -> Option<&str> {
        match self {
            NodeError::Token(refusal) => refusal.token_id(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// The hostname the node gave when it joined (`node.hostname` in constraints).
    pub name: String,
    pub joined_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Admin-set: by `node update`, or by the join token the node joined with.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the node reported at join (`node.platform.os`, `node.platform.arch`).
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub arch: String,
    /// The ID of the token it joined with.
    #[serde(default)]
    pub join_token_id: Option<String>,
}

#[cfg(test)]
impl NodeRecord {
    /// Unit tests' node: named and identified `id`, joined now, no labels, no platform.
    pub fn fixture(id: &str) -> Self {
        let now = Utc::now();
        Self {
            id: id.into(),
            name: id.into(),
            joined_at: now,
            last_seen: now,
            labels: BTreeMap::new(),
            os: String::new(),
            arch: String::new(),
            join_token_id: None,
        }
    }
}

/// What a joining node says about itself: recorded, never trusted for authorization.
#[derive(Debug, Clone, Default)]
pub struct Claimed<'a> {
    pub hostname: &'a str,
    pub os: &'a str,
    pub arch: &'a str,
}

/// A minted join token: the whole token (shown once) and its record.
pub struct Minted {
    pub token: String,
    pub record: TokenRecord,
    /// Tokens that could still admit nodes, revoked first (`rotate`).
    pub revoked: usize,
}

pub fn node_key(id: &str) -> String {
    format!("node/{id}")
}
fn decode(entry: &Entry) -> Result<NodeRecord, StoreError> {
    serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt(format!("{}: {e}", entry.key)))
}
fn encode(record: &NodeRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("record serialises")
}

/// At most `max` characters of what a node claims, without control characters.
fn claimed(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
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

    /// Mints a join token (`rotate`: after revoking every outstanding one). Expired tokens and
    /// the single sealed token of earlier versions are deleted on the way.
    pub async fn mint_token(&self, grant: &Grant, rotate: bool, created_by: &str) -> Result<Minted, NodeError> {
        model::validate_labels(&grant.labels).map_err(VaultError::from)?;
        let now = Utc::now();
        let outstanding = self.store.range(join_token::PREFIX).await?.entries;
        let (secret, record) = join_token::mint(grant, created_by, now);
        let (txn, revoked) = if rotate {
            // Every outstanding token goes in one prefix delete (one operation however many there
            // are: etcd allows 128 in a transaction), committed before the new token is: etcd
            // refuses a put inside a range the same transaction deletes. A failure between the two
            // leaves no token at all, never an old one: `--rotate` again mints one.
            let revoke = Txn::new().delete(join_token::LEGACY_KEY).delete_prefix(join_token::PREFIX);
            self.store.commit(revoke).await?;
            (
                Txn::new(),
                outstanding
                    .iter()
                    .filter(|e| join_token::decode(e).is_ok_and(|r| join_token::check(&r, now).is_ok()))
                    .count(),
            )
        } else {
            (join_token::sweep(Txn::new(), &outstanding, now), 0)
        };
        let key = join_token::key_of(&secret);
        self.store.commit(txn.check(&key, Expect::Absent).put(key, join_token::encode(&record))).await?;
        // Replicas on etcd: the token lists where agents reach them (none for an embedded vault).
        let vaults = crate::replica::advertised(self.store.as_ref()).await?;
        let token = hush_proto::token::format_with_vaults(&self.ca_fingerprint, &secret, &vaults);
        Ok(Minted { token, record, revoked })
    }

    /// Every stored join token (expired ones too, until the next mint deletes them), by
    /// creation time. Records hold no secret: only its hash, which is their store key.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, NodeError> {
        let entries = self.store.range(join_token::PREFIX).await?.entries;
        let mut tokens = entries.iter().map(join_token::decode).collect::<Result<Vec<_>, _>>()?;
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    /// Revokes one join token, named by its ID or a unique ID prefix: it admits no node from
    /// now on. Nodes that joined with it stay.
    pub async fn remove_token(&self, reference: &str) -> Result<TokenRecord, NodeError> {
        let not_found = || NodeError::TokenNotFound(reference.to_string());
        for _ in 0..CONTENDED_RETRIES {
            let entries = self.store.range(join_token::PREFIX).await?.entries;
            let decoded: Vec<(&Entry, TokenRecord)> =
                entries.iter().filter_map(|e| join_token::decode(e).ok().map(|r| (e, r))).collect();
            let found = match decoded.iter().find(|(_, r)| r.id == reference) {
                Some(exact) => exact,
                None => match decoded
                    .iter()
                    .filter(|(_, r)| !reference.is_empty() && r.id.starts_with(reference))
                    .collect::<Vec<_>>()
                    .as_slice()
                {
                    [one] => *one,
                    _ => return Err(not_found()),
                },
            };
            let (entry, record) = found;
            let txn = Txn::new().check(&entry.key, Expect::At(entry.mod_revision)).delete(entry.key.clone());
            match self.store.commit(txn).await {
                Ok(_) => return Ok(record.clone()),
                // A join used it meanwhile: look again (it may be used up or gone).
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(NodeError::Contended(format!("(join token {reference})")))
    }

    /// Checks the token, records the node (with the token's labels) and signs its certificate.
    /// The token's use is counted in the same transaction that adds the node, so a token with
    /// `N` uses admits exactly `N` nodes however many join at once.
    pub async fn join(
        &self,
        ca: &CertificateAuthority,
        token: &str,
        csr_pem: &str,
        claims: &Claimed<'_>,
    ) -> Result<(NodeRecord, String), NodeError> {
        let (fingerprint, secret) = hush_proto::token::split(token).ok_or(NodeError::MalformedToken)?;
        if !fingerprint.eq_ignore_ascii_case(&self.ca_fingerprint) {
            return Err(NodeError::OtherVault);
        }
        let key = join_token::key_of(secret);
        let name = match claimed(claims.hostname, 64) {
            name if name.is_empty() => "node".to_string(),
            name => name,
        };
        for _ in 0..CONTENDED_RETRIES {
            let entry = self.store.get(&key).await?.ok_or(TokenRefusal::Unknown)?;
            let mut grant = join_token::decode(&entry)?;
            let now = Utc::now();
            join_token::check(&grant, now)?;
            grant.uses += 1;
            let record = NodeRecord {
                id: model::new_id(),
                name: name.clone(),
                joined_at: now,
                last_seen: now,
                labels: grant.labels.clone(),
                os: claimed(claims.os, 32),
                arch: claimed(claims.arch, 32),
                join_token_id: Some(grant.id.clone()),
            };
            let cert_pem = ca.sign_request(csr_pem, &record.id, NODE_OU).map_err(|e| NodeError::Csr(e.to_string()))?;
            let txn = Txn::new()
                .check(&key, Expect::At(entry.mod_revision))
                .put(&key, join_token::encode(&grant))
                .check(node_key(&record.id), Expect::Absent)
                .put(node_key(&record.id), encode(&record));
            match self.store.commit(txn).await {
                Ok(_) => return Ok((record, cert_pem)),
                // Another join used the token meanwhile (or it was rotated): look again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(NodeError::Contended("(joining)".into()))
    }

    /// `node update --label-add/--label-rm` (adds first, then removes; removing a missing key is
    /// an error, as Docker's). Tasks on the node whose service now excludes it are ended in the
    /// same transaction, as Swarm's constraint enforcer does: their files leave the node at once.
    pub async fn update_labels(
        &self,
        reference: &str,
        add: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(NodeRecord, Vec<TaskRecord>), NodeError> {
        model::validate_labels(add).map_err(VaultError::from)?;
        let services = crate::services::Services::new(self.objects.clone());
        for _ in 0..CONTENDED_RETRIES {
            let node = self.find(reference).await?;
            let Some(entry) = self.store.get(&node_key(&node.id)).await? else { continue };
            let mut record = decode(&entry)?;
            record.labels.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
            for key in remove {
                record.labels.remove(key).ok_or_else(|| NodeError::NoSuchLabel(key.clone()))?;
            }
            let mut txn = Txn::new()
                .check(node_key(&record.id), Expect::At(entry.mod_revision))
                .put(node_key(&record.id), encode(&record));
            let mut ended = Vec::new();
            for task in crate::tasks::Tasks::new(self.store.clone()).of_node(&record.id).await? {
                let service = services.get(&task.service_id).await.map_err(|e| {
                    NodeError::Vault(VaultError::Corrupt { key: task.service_id.clone(), reason: e.to_string() })
                })?;
                if let Some((service, revision)) = service
                    && crate::placement::may_run(&record, &service).is_err()
                {
                    txn = txn
                        .check(crate::services::obj_key(&service.id), Expect::At(revision))
                        .delete(task_key(&task.id));
                    ended.push(task);
                }
            }
            match self.store.commit(txn).await {
                Ok(_) => return Ok((record, ended)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(NodeError::Contended(reference.to_string()))
    }

    /// The node behind a node certificate, if it has not been removed.
    pub async fn get(&self, id: &str) -> Result<NodeRecord, NodeError> {
        Ok(self.get_at(id).await?.0)
    }

    /// [`Nodes::get`], with the store revision the record was read at.
    pub async fn get_at(&self, id: &str) -> Result<(NodeRecord, u64), NodeError> {
        match self.store.get(&node_key(id)).await? {
            Some(entry) => Ok((decode(&entry)?, entry.mod_revision)),
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
    ///
    /// The node's record goes in the first transaction, with up to [`TASKS_PER_TXN`] of its
    /// tasks (etcd allows 128 operations in one); that one is the removal every replica acts
    /// on. Further tasks follow in more transactions; any a crash leaves behind belong to no
    /// node and are swept by the leader's cleanup (see `jobs::cleanup`).
    pub async fn remove(&self, reference: &str) -> Result<NodeRecord, NodeError> {
        let node = self.find(reference).await?;
        let tasks = crate::tasks::Tasks::new(self.store.clone()).of_node(&node.id).await?;
        let mut chunks = tasks.chunks(TASKS_PER_TXN);
        let first = chunks.next().unwrap_or_default();
        // Who started its tasks is kept for the node's late audit reports, which a removed node
        // can no longer send.
        let txn = Txn::new().delete(node_key(&node.id)).delete_prefix(crate::tasks::owner_prefix(&node.id));
        self.store.commit(first.iter().fold(txn, |txn, t| txn.delete(task_key(&t.id)))).await?;
        for chunk in chunks {
            self.store.commit(chunk.iter().fold(Txn::new(), |txn, t| txn.delete(task_key(&t.id)))).await?;
        }
        Ok(node)
    }
}
