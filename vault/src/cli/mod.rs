//! The `hush` command line: argument definitions and dispatch. Each subcommand group lives in
//! its own module; all of them talk to the vault through [`crate::client`].

mod dev;
mod input;
mod objects;
mod output;
mod vault;

use crate::client::{self, Target};
use crate::model::Kind;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "hush", version, about = "Secrets and configs for containers, served from memory and audited")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run and administer a vault (manager)
    #[command(subcommand)]
    Vault(vault::VaultCommand),
    /// Manage secrets
    Secret(objects::ObjectArgs),
    /// Manage configs
    Config(objects::ObjectArgs),
    /// Run a throw-away vault on loopback for trying Hush out
    Dev(dev::DevArgs),
}

/// Where the vault is: shared by every command that calls it.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Vault address (host:port)
    #[arg(long, env = "HUSH_VAULT", global = true)]
    vault: Option<String>,
    /// Directory with ca.pem, cert.pem and key.pem of an admin bundle
    #[arg(long, env = "HUSH_TLS_DIR", global = true)]
    tls_dir: Option<PathBuf>,
}

impl Connection {
    fn target(&self) -> Target {
        Target { addr: self.vault.clone(), tls_dir: self.tls_dir.clone() }
    }
}

/// Failure of one call, already worded for the user.
fn call_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(client::explain(&status))
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Vault(command) => vault::run(command).await,
        Command::Secret(args) => objects::run(Kind::Secret, args).await,
        Command::Config(args) => objects::run(Kind::Config, args).await,
        Command::Dev(args) => dev::run(args).await,
    }
}
