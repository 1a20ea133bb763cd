//! Token buckets keyed by caller (a peer address, a node): how often each may do something
//! that costs the vault (a refused join, audit events), in bounded memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// `burst` at once, then `per_second` on average.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self { tokens: rate.burst, at: now }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
    }
}

struct Buckets<K> {
    keyed: HashMap<K, Bucket>,
    /// Shared by every key that finds the table full: many keys cannot buy more than one.
    overflow: Bucket,
}

/// One bucket per key, at most `max_keys` of them (idle, full buckets are forgotten first).
pub struct Limiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<Buckets<K>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        let now = Instant::now();
        Self {
            rate,
            max_keys,
            buckets: Mutex::new(Buckets { keyed: HashMap::new(), overflow: Bucket::full(rate, now) }),
        }
    }

    /// Takes `cost` tokens from `key`'s bucket if it holds that many; says whether it did.
    pub fn try_take(&self, key: &K, cost: f64) -> bool {
        self.with_bucket(key, |bucket| {
            let ok = bucket.tokens >= cost;
            if ok {
                bucket.tokens -= cost;
            }
            ok
        })
    }

    /// Whether `key` could take `cost` now (takes nothing).
    pub fn has(&self, key: &K, cost: f64) -> bool {
        self.with_bucket(key, |bucket| bucket.tokens >= cost)
    }

    fn with_bucket<T>(&self, key: &K, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let now = Instant::now();
        let rate = self.rate;
        let mut buckets = self.buckets.lock().expect("not poisoned");
        let buckets = &mut *buckets;
        if !buckets.keyed.contains_key(key) && buckets.keyed.len() >= self.max_keys {
            buckets.keyed.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < rate.burst
            });
        }
        let bucket = if buckets.keyed.len() < self.max_keys || buckets.keyed.contains_key(key) {
            buckets.keyed.entry(key.clone()).or_insert_with(|| Bucket::full(rate, now))
        } else {
            &mut buckets.overflow
        };
        bucket.refill(rate, now);
        f(bucket)
    }
}

/// The key for a peer address: the address itself for IPv4, its /64 for IPv6 (one host
/// usually holds a whole /64).
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

/// Counts of what a limiter refused, per key, to be recorded once in a while instead of once
/// each. At most `max_keys` keys; the rest are counted under `None`.
pub struct Suppressed<K> {
    max_keys: usize,
    counts: Mutex<HashMap<Option<K>, u64>>,
}

impl<K: Hash + Eq + Clone> Suppressed<K> {
    pub fn new(max_keys: usize) -> Self {
        Self { max_keys, counts: Mutex::new(HashMap::new()) }
    }

    pub fn count(&self, key: &K) {
        let mut counts = self.counts.lock().expect("not poisoned");
        let slot = if counts.contains_key(&Some(key.clone())) || counts.len() < self.max_keys {
            Some(key.clone())
        } else {
            None
        };
        *counts.entry(slot).or_default() += 1;
    }

    /// Every count so far, emptied.
    pub fn take(&self) -> Vec<(Option<K>, u64)> {
        self.counts.lock().expect("not poisoned").drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses() {
        let limiter = Limiter::new(Rate { per_second: 0.001, burst: 3.0 }, 10);
        let taken = (0..10).filter(|_| limiter.try_take(&"a", 1.0)).count();
        assert_eq!(taken, 3);
        assert!(!limiter.has(&"a", 1.0));
        // Another key has its own bucket.
        assert!(limiter.try_take(&"b", 1.0));
    }

    #[test]
    fn keys_beyond_the_table_share_one_bucket() {
        let limiter = Limiter::new(Rate { per_second: 0.001, burst: 2.0 }, 2);
        assert!(limiter.try_take(&1, 1.0));
        assert!(limiter.try_take(&2, 1.0));
        // 3, 4, 5 all land in the overflow bucket: two tokens between them.
        let taken = [3, 4, 5, 6].iter().filter(|k| limiter.try_take(k, 1.0)).count();
        assert_eq!(taken, 2);
    }

    #[test]
    fn ipv6_peers_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(peer_key(mapped), "127.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn suppressed_counts_are_bounded_and_taken_once() {
        let suppressed = Suppressed::new(2);
        for key in [1, 1, 2, 3, 4] {
            suppressed.count(&key);
        }
        let mut counts = suppressed.take();
        counts.sort();
        assert_eq!(counts, vec![(None, 2), (Some(1), 2), (Some(2), 1)]);
        assert!(suppressed.take().is_empty());
    }
}
