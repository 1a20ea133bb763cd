//! Join tokens: minted by admins, each with an expiry, an optional use limit and node labels
//! for the nodes that join with it. Only a hash of a token's secret is stored, so a token is
//! shown once, when it is made; several may be outstanding at once, and `rotate` revokes all.
//!
//! Store layout: `jointoken/<SHA-256 of the secret, hex>` → [`TokenRecord`]. A join looks the
//! record up by the hash of what it was given, so no comparison of secrets happens at all, and
//! the secret itself is in no store, log or audit entry (the record's random `id` names it).

use crate::crypto::sha256_hex;
use crate::model;
use crate::store::{Entry, StoreError, Txn};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const PREFIX: &str = "jointoken/";
/// Where the single sealed token of earlier versions lived; removed when a token is minted.
pub const LEGACY_KEY: &str = "cluster/join-token";
/// How long a token lasts unless `--ttl` says otherwise (as `kubeadm token create`).
pub const DEFAULT_TTL: Duration = Duration::hours(24);

/// What an admin asks for.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// `None`: [`DEFAULT_TTL`].
    pub ttl: Option<Duration>,
    /// `None`: any number of joins until it expires.
    pub max_uses: Option<u64>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public name of the token (audit, `node inspect`); never the secret.
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: DateTime<Utc>,
    /// `None`: unlimited.
    pub max_uses: Option<u64>,
    pub uses: u64,
    pub labels: BTreeMap<String, String>,
}

/// Why a presented token does not admit a node (the messages are what the agent prints).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("invalid join token: it is wrong or has been revoked (make a new one with `hush node join-token`)")]
    Unknown,
    #[error("invalid join token: token {id} expired at {at} (make a new one with `hush node join-token`)")]
    Expired { id: String, at: String },
    #[error(
        "invalid join token: token {id} has been used {uses} time(s), its limit (make a new one with `hush node join-token`)"
    )]
    UsedUp { id: String, uses: u64 },
}

impl TokenRefusal {
    /// The refused token's ID, when the secret named a real token.
    pub fn token_id(&self) -> Option<&str> {
        match self {
            TokenRefusal::Unknown => None,
            TokenRefusal::Expired { id, .. } | TokenRefusal::UsedUp { id, .. } => Some(id),
        }
    }
}

/// The store key of the token whose secret is `secret`.
pub fn key_of(secret: &str) -> String {
    format!("{PREFIX}{}", sha256_hex(format!("hush/join-token/v1\0{secret}").as_bytes()))
}

pub fn decode(entry: &Entry) -> Result<TokenRecord, StoreError> {
    serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt(format!("{}: {e}", entry.key)))
}

pub fn encode(record: &TokenRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("record serialises")
}

/// A new token: its secret (to show once) and the record to store under [`key_of`] it.
pub fn mint(grant: &Grant, created_by: &str, now: DateTime<Utc>) -> (String, TokenRecord) {
    // Two IDs' worth of randomness: 256 bits.
    let secret = format!("{}{}", model::new_id(), model::new_id());
    let record = TokenRecord {
        id: model::new_id()[..12].to_string(),
        created_at: now,
        created_by: created_by.to_string(),
        expires_at: now + grant.ttl.unwrap_or(DEFAULT_TTL),
        max_uses: grant.max_uses,
        uses: 0,
        labels: grant.labels.clone(),
    };
    (secret, record)
}

/// Whether `record` admits one more node at `now`.
pub fn check(record: &TokenRecord, now: DateTime<Utc>) -> Result<(), TokenRefusal> {
    if now >= record.expires_at {
        return Err(TokenRefusal::Expired {
            id: record.id.clone(),
            at: record.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
    }
    if record.max_uses.is_some_and(|max| record.uses >= max) {
        return Err(TokenRefusal::UsedUp { id: record.id.clone(), uses: record.uses });
    }
    Ok(())
}

/// Deletes of records no join can use any more (expired), plus the legacy single token: at
/// most 100, so the transaction stays within etcd's 128 operations (the leader's cleanup
/// sweeps the rest).
pub fn sweep(txn: Txn, entries: &[Entry], now: DateTime<Utc>) -> Txn {
    let expired = entries.iter().filter(|e| decode(e).map_or(true, |r| now >= r.expires_at)).take(100);
    expired.fold(txn.delete(LEGACY_KEY), |txn, e| txn.delete(e.key.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_and_run_out() {
        let now = Utc::now();
        let grant = Grant { ttl: Some(Duration::seconds(60)), max_uses: Some(2), labels: BTreeMap::new() };
        let (secret, mut record) = mint(&grant, "admin:a", now);
        assert!(secret.len() >= 50);
        assert_ne!(key_of(&secret), key_of(&format!("{secret}x")));
        assert!(!key_of(&secret).contains(&secret));
        assert_eq!(check(&record, now), Ok(()));
        record.uses = 2;
        assert!(matches!(check(&record, now), Err(TokenRefusal::UsedUp { uses: 2, .. })));
        record.uses = 0;
        let later = now + Duration::seconds(61);
        let refusal = check(&record, later).unwrap_err();
        assert_eq!(refusal.token_id(), Some(record.id.as_str()));
        assert!(refusal.to_string().contains("expired"), "{refusal}");
        // Unlimited uses.
        let (_, record) = mint(&Grant::default(), "admin:a", now);
        assert_eq!(record.expires_at, now + DEFAULT_TTL);
        assert_eq!(check(&TokenRecord { uses: 1_000_000, ..record }, now), Ok(()));
    }
}
