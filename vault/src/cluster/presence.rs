//! This replica's etcd lease and its member record: the lease is granted at start, kept
//! alive every third of its TTL, and granted anew when etcd says it expired (the replica was
//! paused or cut off longer than its TTL). Each renewal also rewrites the member record with
//! the time, which `hush vault members` shows as the last heartbeat. At shutdown the lease is
//! revoked, so another replica can lead at once.
//!
//! The replica's advertise entry (`cluster/advertise/<id>`, which join tokens list) is put
//! again under each lease it is granted, so a replica that is gone (killed, stopped, cut off
//! past its TTL) drops out of new join tokens when its lease ends, and comes back when it
//! registers again. Its member record stays (`hush vault members` lists it as `Down`).

use super::members::{MemberRecord, member_key};
use etcd_client::{Client, PutOptions};
use std::time::Duration;
use tokio::sync::watch;

const RETRY: Duration = Duration::from_millis(250);

/// Keeps a lease for `record` until `stopping`; publishes the lease held in `lease`.
pub async fn run(
    client: Client,
    prefix: String,
    mut record: MemberRecord,
    ttl: Duration,
    lease: watch::Sender<Option<i64>>,
    mut stopping: watch::Receiver<bool>,
) {
    let period = ttl / 3;
    let key = format!("{prefix}{}", member_key(&record.id));
    let advertise_key = format!("{prefix}{}{}", crate::replica::ADVERTISE_PREFIX, record.id);
    let mut lease_client = client.lease_client();
    let mut kv = client.kv_client();
    // What the replica published at its start, before this runs (`replica::publish_advertised`).
    let mut advertised: Option<Vec<u8>> = None;
    'grant: loop {
        let id = match lease_client.grant(ttl.as_secs() as i64, None).await {
            Ok(granted) => granted.id(),
            Err(e) => {
                tracing::debug!(error = %e, "lease grant");
                if pause(RETRY, &mut stopping).await {
                    return;
                }
                continue;
            }
        };
        record.lease = id;
        lease.send_replace(Some(id));
        tracing::info!(lease = format_args!("{id:x}"), ttl_s = ttl.as_secs(), "replica registered");
        let mut attached = false;
        loop {
            record.heartbeat_at = chrono::Utc::now();
            let put = kv.put(key.as_str(), serde_json::to_vec(&record).expect("record serialises"), None);
            if let Err(e) = put.await {
                tracing::debug!(error = %e, "member heartbeat");
            }
            if !attached {
                attached = attach_advertised(&mut kv, &advertise_key, &mut advertised, id).await;
            }
            if pause(period, &mut stopping).await {
                break 'grant;
            }
            match keep_alive(&mut lease_client, id).await {
                Renewal::Alive => {}
                Renewal::Expired => {
                    tracing::warn!(lease = format_args!("{id:x}"), "this replica's lease expired: registering again");
                    lease.send_replace(None);
                    continue 'grant;
                }
                // Unreachable for now: the lease may still be alive; try again next period.
                Renewal::Unknown(why) => tracing::debug!(error = %why, "lease keep-alive"),
            }
        }
    }
    // Shutting down: hand leadership over now rather than after the TTL.
    if let Some(id) = lease.send_replace(None) {
        let _ = tokio::time::timeout(Duration::from_secs(1), lease_client.revoke(id)).await;
    }
}

/// Puts this replica's advertise entry under lease `id` (read from etcd the first time);
/// `true` once it is (or there is none to put).
async fn attach_advertised(
    kv: &mut etcd_client::KvClient,
    key: &str,
    advertised: &mut Option<Vec<u8>>,
    id: i64,
) -> bool {
    if advertised.is_none() {
        match kv.get(key, None).await {
            Ok(found) => match found.kvs().first() {
                Some(entry) => *advertised = Some(entry.value().to_vec()),
                // Nothing advertised (no address agents could use): nothing to keep alive.
                None => return true,
            },
            Err(e) => {
                tracing::debug!(error = %e, "reading this replica's advertise entry");
                return false;
            }
        }
    }
    let value = advertised.clone().expect("read above");
    match kv.put(key, value, Some(PutOptions::new().with_lease(id))).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "advertise entry under the lease");
            false
        }
    }
}

enum Renewal {
    Alive,
    /// Etcd no longer knows the lease: its keys are gone.
    Expired,
    /// No answer: the lease may or may not be alive.
    Unknown(String),
}

/// One keep-alive round trip.
async fn keep_alive(client: &mut etcd_client::LeaseClient, id: i64) -> Renewal {
    match tokio::time::timeout(Duration::from_secs(2), client.keep_alive(id)).await {
        Ok(Ok(_)) => Renewal::Alive,
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) if why.contains("not found") => Renewal::Expired,
        Ok(Err(e)) => Renewal::Unknown(e.to_string()),
        Err(_) => Renewal::Unknown("no answer in time".into()),
    }
}

/// Sleeps `period`; `true` if the replica began to stop meanwhile.
async fn pause(period: Duration, stopping: &mut watch::Receiver<bool>) -> bool {
    if *stopping.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(period) => *stopping.borrow(),
        changed = stopping.changed() => changed.is_err() || *stopping.borrow(),
    }
}
