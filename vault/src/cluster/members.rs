//! The replicas of a store as `hush vault members` shows them: each replica's record
//! (`member/<id>`: address, version, start, last heartbeat, lease), whether its lease is alive,
//! who leads, and the health of each etcd endpoint.
//!
//! A record outlives its replica's lease on purpose: a replica that died is listed as `Down`
//! (as `docker node ls` lists a lost manager as unreachable) until the leader forgets it
//! after [`FORGET_AFTER`] without a heartbeat.

use crate::store::Store;
use crate::store::etcd::{EndpointStatus, EtcdConfig};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How long a replica without a heartbeat stays listed.
pub const FORGET_AFTER: chrono::Duration = chrono::Duration::hours(24);

pub const MEMBER_PREFIX: &str = "member/";

pub fn member_key(id: &str) -> String {
    format!("{MEMBER_PREFIX}{id}")
}

/// What a replica writes about itself at every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: String,
    /// Where agents and admins reach it.
    pub address: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Its etcd lease (0 on the embedded store, which has none).
    pub lease: i64,
}

impl MemberRecord {
    pub fn new(id: &str, address: &str) -> Self {
        let now = Utc::now();
        Self {
            id: id.to_string(),
            address: address.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: now,
            heartbeat_at: now,
            lease: 0,
        }
    }
}

/// One replica as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub record: MemberRecord,
    /// Its lease is alive (it heartbeats).
    pub ready: bool,
    pub leader: bool,
    /// The replica answering the listing.
    pub answering: bool,
}

/// Every recorded replica, the answering one's view of whether each is alive, sorted by
/// address then ID. `alive(lease)` says whether a lease is still held.
pub async fn list<F, Fut>(store: &dyn Store, answering: &str, alive: F) -> Result<Vec<Member>, String>
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let entries = store.range(MEMBER_PREFIX).await.map_err(|e| e.to_string())?.entries;
    let leader = super::election::current(store).await.map_err(|e| e.to_string())?.map(|(r, _)| r.replica);
    let mut members = Vec::with_capacity(entries.len());
    for entry in entries {
        let Ok(record) = serde_json::from_slice::<MemberRecord>(&entry.value) else { continue };
        let answering = record.id == answering;
        // The answering replica is alive by definition; the others by their lease.
        let ready = answering || alive(record.lease).await;
        let leader = ready && leader.as_deref() == Some(record.id.as_str());
        members.push(Member { record, ready, leader, answering });
    }
    members.sort_by(|a, b| a.record.address.cmp(&b.record.address).then_with(|| a.record.id.cmp(&b.record.id)));
    Ok(members)
}

/// The status of every endpoint in `config`, asked of each alone, at once.
pub async fn endpoints(config: &EtcdConfig) -> Vec<(String, Result<EndpointStatus, String>)> {
    let asks = config.endpoints.iter().map(|endpoint| async move {
        let status = crate::store::etcd::endpoint_status(config, endpoint).await.map_err(|e| e.to_string());
        (endpoint.clone(), status)
    });
    futures::future::join_all(asks).await
}
