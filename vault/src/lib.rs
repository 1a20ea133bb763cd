//! The Hush vault: encrypted store, key hierarchy, CA, the admin gRPC API, and the `hush` CLI.
#![forbid(unsafe_code)]

pub mod acceptor;
pub mod api;
pub mod assign;
pub mod audit;
pub mod ca;
pub mod cli;
pub mod client;
pub mod compose;
pub mod crypto;
pub mod fsutil;
pub mod hardening;
pub mod identity;
pub mod init;
pub mod join_gate;
pub mod k8s;
pub mod keyring;
pub mod layout;
pub mod logging;
pub mod model;
pub mod node_api;
pub mod nodes;
pub mod objects;
pub mod ratelimit;
pub mod replica;
pub mod secret;
pub mod server;
pub mod services;
pub mod spec;
pub mod store;
pub mod tasks;
pub mod template;
pub mod tls;
pub mod vault;
