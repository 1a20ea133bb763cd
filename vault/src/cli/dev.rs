//! `hush dev`: a throw-away vault in a temp dir on loopback, plus an agent joined to it (the
//! `hush-agent` binary beside `hush`, run as a child process so the vault needs no FUSE code).

use super::vault::shutdown_signal;
use crate::hardening::{disable_core_dumps, lock_memory};
use crate::init::{InitOptions, init};
use crate::layout::DataDir;
use crate::server::serve_vault;
use crate::vault::Vault;
use anyhow::Context;
use clap::Args;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Loopback address to serve on (port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: String,
    /// Vault only, no agent
    #[arg(long)]
    no_agent: bool,
}

/// Starts `hush-agent` joined to the dev vault; returns once it serves its control socket.
/// The token goes in the agent's environment, never on its command line.
fn start_agent(temp: &Path, addr: &str, token: &str) -> anyhow::Result<Child> {
    let agent = std::env::current_exe()?.with_file_name("hush-agent");
    let mut child = Command::new(&agent)
        .args(["--vault", addr])
        .env("HUSH_JOIN_TOKEN", token)
        .arg("--state-dir")
        .arg(temp.join("agent"))
        .arg("--mount-root")
        .arg(temp.join("mnt"))
        .arg("--socket")
        .arg(temp.join("agent.sock"))
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", agent.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    // The agent prints one line once it serves; anything else means it failed (its error is on stderr).
    match lines.next() {
        Some(Ok(line)) if line.starts_with("hush-agent: node") => {
            std::thread::spawn(move || lines.for_each(drop));
            Ok(child)
        }
        _ => {
            let status = child.wait()?;
            anyhow::bail!("the agent did not start ({status})")
        }
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    disable_core_dumps();
    lock_memory();
    let temp = tempfile::Builder::new().prefix("hush-dev-").tempdir().context("cannot create a temp dir")?;
    let dir = DataDir::new(temp.path().join("vault"));
    init(&dir, &InitOptions::default())?;
    let vault = Arc::new(Vault::open(&dir)?);
    // One join, soon: the dev agent's token admits one node for a minute.
    let grant = crate::join_token::Grant {
        ttl: Some(chrono::Duration::minutes(1)),
        max_uses: Some(1),
        labels: Default::default(),
    };
    let token = vault.nodes()?.mint_token(&grant, false, "dev").await.map_err(|e| anyhow::anyhow!("{e}"))?.token;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn({
        let (vault, dir) = (vault.clone(), dir.clone());
        async move { serve_vault(vault, &dir, listener, shutdown_signal()).await }
    });

    let agent = if args.no_agent {
        None
    } else {
        let (temp_path, addr, token) = (temp.path().to_path_buf(), addr.to_string(), token.clone());
        match tokio::task::spawn_blocking(move || start_agent(&temp_path, &addr, &token)).await? {
            Ok(child) => Some(child),
            Err(e) => {
                eprintln!("warning: {e:#}; continuing with the vault only");
                None
            }
        }
    };
    println!(
        "Hush dev vault on {addr}{}; its data lives in {} until you stop it (Ctrl-C).",
        if agent.is_some() { " with an agent" } else { "" },
        temp.path().display()
    );
    println!("In another shell:");
    println!();
    println!("export HUSH_VAULT={addr}");
    println!("export HUSH_TLS_DIR={}", dir.admin_dir().display());
    if agent.is_some() {
        println!("export HUSH_AGENT_SOCKET={}", temp.path().join("agent.sock").display());
        println!("export HUSH_MOUNT_ROOT={}", temp.path().join("mnt").display());
    }
    println!();
    std::io::stdout().flush().ok();
    let served = server.await?;
    if let Some(mut child) = agent {
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("child pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = child.wait();
    }
    served?;
    drop(temp);
    Ok(ExitCode::SUCCESS)
}
