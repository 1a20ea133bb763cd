//! Refused joins, per peer address. `Join` is the one call anyone can make without a
//! certificate, so its refusals are what an outsider can make the vault write: the first few
//! from an address are logged and audited one by one; beyond a token bucket the address's
//! joins are refused unchecked and only counted, and each address's count becomes one audit
//! entry every few seconds.

use crate::audit::AuditEntry;
use crate::ratelimit::{Limiter, Rate, Suppressed, peer_key};
use crate::vault::Vault;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// Refused joins one address may cause before it is throttled: 10 at once, then one per 2 s.
pub const RATE: Rate = Rate { per_second: 0.5, burst: 10.0 };
/// Addresses tracked one by one; the rest share one bucket.
const MAX_PEERS: usize = 10_000;
/// How often throttled counts are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);

pub struct JoinGate {
    limiter: Limiter<IpAddr>,
    suppressed: Suppressed<IpAddr>,
}

impl Default for JoinGate {
    fn default() -> Self {
        Self { limiter: Limiter::new(RATE, MAX_PEERS), suppressed: Suppressed::new(MAX_PEERS) }
    }
}

fn key(peer: Option<IpAddr>) -> IpAddr {
    peer_key(peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
}

impl JoinGate {
    /// Refuses (and counts) a join from an address that has used up its refusals.
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<(), Status> {
        let key = key(peer);
        if self.limiter.has(&key, 1.0) {
            return Ok(());
        }
        self.suppressed.count(&key);
        Err(Status::resource_exhausted(format!("too many refused joins from {key}: try again in a few seconds")))
    }

    /// Charges a refused join to its address.
    pub fn refused(&self, peer: Option<IpAddr>) {
        self.limiter.try_take(&key(peer), 1.0);
    }

    /// One `denied` entry per address for the joins refused unchecked since the last call.
    pub fn take_entries(&self) -> Vec<AuditEntry> {
        self.suppressed
            .take()
            .into_iter()
            .map(|(peer, count)| {
                let from = peer.map_or_else(|| "other addresses".to_string(), |ip| ip.to_string());
                AuditEntry {
                    count: Some(count),
                    ..AuditEntry::denied(
                        format!("joining:{from}"),
                        format!(
                            "join: {count} joins from {from} refused unchecked (more than {} refused joins, then {}/s)",
                            RATE.burst, RATE.per_second
                        ),
                    )
                }
            })
            .collect()
    }

    /// Writes the throttled counts every [`FLUSH_EVERY`], and once more when the vault stops.
    pub fn spawn_flusher(self: &Arc<Self>, vault: Arc<Vault>) {
        let gate = self.clone();
        tokio::spawn(async move {
            let mut stopping = vault.stopping();
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                let stop = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stopping.changed() => true,
                };
                let entries = gate.take_entries();
                if !entries.is_empty() {
                    let refused: u64 = entries.iter().filter_map(|e| e.count).sum();
                    tracing::warn!(refused, addresses = entries.len(), "joins refused unchecked (rate limit)");
                    vault.audit().record_all(entries).await;
                }
                if stop || *stopping.borrow() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_throttled_after_its_burst_and_counted() {
        let gate = JoinGate::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let mut throttled = 0;
        for _ in 0..100 {
            match gate.admit(Some(a)) {
                Ok(()) => gate.refused(Some(a)),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                    throttled += 1;
                }
            }
        }
        assert_eq!(throttled, 90);
        assert!(gate.admit(Some(b)).is_ok(), "another address is not throttled");
        let entries = gate.take_entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].count, Some(90));
        assert_eq!(entries[0].actor.as_deref(), Some("joining:127.0.0.2"));
        assert!(gate.take_entries().is_empty());
    }
}
