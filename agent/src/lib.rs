//! The Hush node agent: joins a vault, follows the node's assignment stream, and serves each
//! task its secrets and configs from memory through the FUSE filesystem (`hush-fuse`).

pub mod audit;
pub mod caps;
pub mod control;
pub mod daemon;
pub mod handover;
pub mod hardening;
pub mod join_token;
pub mod peer;
pub mod pin;
pub mod reconcile;
pub mod recovery;
pub mod repair;
pub mod run;
pub mod runtime;
pub mod startup;
pub mod state;
pub mod task_init;
pub mod task_ns;
pub mod task_record;
pub mod vault_link;
