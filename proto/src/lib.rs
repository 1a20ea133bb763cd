//! Wire types and tonic services shared by the vault, the agent and the CLI.
#![forbid(unsafe_code)]

pub mod addr;
mod redact;
pub mod token;

/// Version 1 of the Hush protocol (`proto/hush.proto`).
pub mod v1 {
    tonic::include_proto!("hush.v1");
}

pub use v1::*;
