//! How many `hush audit --follow` streams are open: at most [`PER_ADMIN`] for one admin and
//! [`TOTAL`] in all, so followers cannot pile up in the vault's memory; beyond that a clear
//! refusal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::Status;

pub const PER_ADMIN: usize = 16;
pub const TOTAL: usize = 256;

#[derive(Debug, Default)]
pub struct Follows(Mutex<HashMap<String, usize>>);

/// One open follow stream; given back on drop.
pub struct FollowSlot {
    follows: Arc<Follows>,
    admin: String,
}

impl Follows {
    pub fn acquire(self: &Arc<Self>, admin: &str) -> Result<FollowSlot, Status> {
        let mut open = self.0.lock().expect("not poisoned");
        let total: usize = open.values().sum();
        let mine = open.get(admin).copied().unwrap_or(0);
        if mine >= PER_ADMIN || total >= TOTAL {
            return Err(Status::resource_exhausted(format!(
                "too many `hush audit --follow` streams open ({mine} for {admin}, {total} in all; at most {PER_ADMIN} per admin and {TOTAL} in all): close one first"
            )));
        }
        *open.entry(admin.to_string()).or_default() += 1;
        Ok(FollowSlot { follows: self.clone(), admin: admin.to_string() })
    }
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        let mut open = self.follows.0.lock().expect("not poisoned");
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
        let follows = Arc::new(Follows::default());
        let held: Vec<_> = (0..PER_ADMIN).map(|_| follows.acquire("admin:a").unwrap()).collect();
        let refused = follows.acquire("admin:a").err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("close one first"));
        assert!(follows.acquire("admin:b").is_ok(), "another admin has its own share");
        drop(held);
        assert!(follows.acquire("admin:a").is_ok());
    }
}
