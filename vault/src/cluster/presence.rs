//! This replica's etcd lease and its member record: the lease is granted at start, kept
//! alive every third of its TTL, and granted anew when etcd says it expired (the replica was
//! paused or cut off longer than its TTL). Each renewal also rewrites the member record with
//! the time, which `hush vault members` shows as the last heartbeat. At shutdown the lease is
//! revoked, so another replica can lead at once.

use super::members::{MemberRecord, member_key};
use etcd_client::Client;
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
    let mut lease_client = client.lease_client();
    let mut kv = client.kv_client();
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
        loop {
            record.heartbeat_at = chrono::Utc::now();
            let put = kv.put(key.as_str(), serde_json::to_vec(&record).expect("record serialises"), None);
            if let Err(e) = put.await {
                tracing::debug!(error = %e, "member heartbeat");
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
