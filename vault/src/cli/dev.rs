//! `hush dev`: a throw-away vault in a temp dir on loopback, for trying Hush out.

use super::vault::shutdown_signal;
use crate::hardening::disable_core_dumps;
use crate::init::{InitOptions, init};
use crate::layout::DataDir;
use crate::server::serve;
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Loopback address to serve on (port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: String,
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    disable_core_dumps();
    let temp = tempfile::Builder::new().prefix("hush-dev-").tempdir().context("cannot create a temp dir")?;
    let dir = DataDir::new(temp.path().join("vault"));
    init(&dir, &InitOptions::default())?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("Hush dev vault on {addr}; its data lives in {} until you stop it (Ctrl-C).", temp.path().display());
    println!("In another shell:");
    println!();
    println!("export HUSH_VAULT={addr}");
    println!("export HUSH_TLS_DIR={}", dir.admin_dir().display());
    println!();
    std::io::stdout().flush().ok();
    serve(&dir, listener, shutdown_signal()).await?;
    drop(temp);
    Ok(ExitCode::SUCCESS)
}
