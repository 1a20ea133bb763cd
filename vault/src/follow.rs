//! How many audit streams are open, per admin and in all, so that they cannot pile up in the
//! vault's memory; beyond a cap, a clear refusal. One mechanism, two caps: `hush audit --follow`
//! streams ([`FOLLOWS`]: at most [`PER_ADMIN`] for one admin and [`TOTAL`] in all), and queries
//! without `--follow` ([`QUERIES`]: about 0.25 MiB each while they read, 0.43 MiB for a client
//! that stops reading; `tests/benches/audit.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::Status;

pub const PER_ADMIN: usize = 16;
pub const TOTAL: usize = 256;
pub const QUERIES_PER_ADMIN: usize = 128;
pub const QUERIES_TOTAL: usize = 256;

/// A limit on one kind of stream.
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    /// What is counted, as the refusal names it.
    pub what: &'static str,
    pub per_admin: usize,
    pub total: usize,
    /// What the refused admin can do.
    pub then: &'static str,
}

pub const FOLLOWS: Cap =
    Cap { what: "`hush audit --follow` streams", per_admin: PER_ADMIN, total: TOTAL, then: "close one first" };
pub const QUERIES: Cap = Cap {
    what: "`hush audit` queries",
    per_admin: QUERIES_PER_ADMIN,
    total: QUERIES_TOTAL,
    then: "wait for one to finish",
};

/// Open streams of one kind, by admin.
#[derive(Debug)]
pub struct Streams {
    cap: Cap,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream; given back on drop.
pub struct Slot {
    streams: Arc<Streams>,
    admin: String,
}

impl Streams {
    pub fn new(cap: Cap) -> Arc<Self> {
        Arc::new(Self { cap, open: Mutex::default() })
    }

    pub fn acquire(self: &Arc<Self>, admin: &str) -> Result<Slot, Status> {
        let mut open = self.open.lock().expect("not poisoned");
        let total: usize = open.values().sum();
        let mine = open.get(admin).copied().unwrap_or(0);
        let Cap { what, per_admin, total: most, then } = self.cap;
        if mine >= per_admin || total >= most {
            return Err(Status::resource_exhausted(format!(
                "too many {what} open ({mine} for {admin}, {total} in all; at most {per_admin} per admin and {most} in all): {then}"
            )));
        }
        *open.entry(admin.to_string()).or_default() += 1;
        Ok(Slot { streams: self.clone(), admin: admin.to_string() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().expect("not poisoned");
        if let Some(n) = open.get_mut(&self.admin) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.admin);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_are_capped_per_admin_and_given_back() {
        let follows = Streams::new(FOLLOWS);
        let held: Vec<_> = (0..PER_ADMIN).map(|_| follows.acquire("admin:a").unwrap()).collect();
        let refused = follows.acquire("admin:a").err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("close one first"));
        assert!(follows.acquire("admin:b").is_ok(), "another admin has its own share");
        drop(held);
        assert!(follows.acquire("admin:a").is_ok());
    }

    #[test]
    fn queries_are_capped_in_all_across_admins() {
        let queries = Streams::new(QUERIES);
        let admins = QUERIES_TOTAL.div_ceil(QUERIES_PER_ADMIN);
        let held: Vec<_> = (0..QUERIES_TOTAL)
            .map(|i| queries.acquire(&format!("admin:{}", i % admins)).expect("under both caps"))
            .collect();
        let refused = queries.acquire("admin:new").err().expect("past the total");
        assert_eq!(
            refused.message(),
            format!(
                "too many `hush audit` queries open (0 for admin:new, {QUERIES_TOTAL} in all; at most {QUERIES_PER_ADMIN} per admin and {QUERIES_TOTAL} in all): wait for one to finish"
            )
        );
        drop(held);
        assert!(queries.acquire("admin:new").is_ok());
    }
}
