//! `hush dev`: a throw-away vault in a temp dir on loopback, plus an agent joined to it (the
//! `hush-agent` binary beside `hush`, run as a child process so the vault needs no FUSE code).

use super::dev_dir::DevDir;
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
use std::process::{Command, ExitCode, Stdio};
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

/// The agent's mount point inside the dev dir.
pub(super) const MOUNT_DIR: &str = "mnt";

/// The dev agent, a child process that dies with this one.
struct Agent {
    pid: rustix::process::Pid,
    exited: std::sync::mpsc::Receiver<std::io::Result<std::process::ExitStatus>>,
}

impl Agent {
    /// Starts `hush-agent` joined to the dev vault; returns once it serves its control socket.
    ///
    /// The child is spawned from a thread that lives as long as the child (`PR_SET_PDEATHSIG`
    /// fires when the spawning *thread* ends): with `--die-with-parent` it gets SIGTERM when this
    /// process dies, even by SIGKILL, so it unmounts and exits instead of serving on under PID 1.
    fn start(temp: &Path, addr: &str, token: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?.with_file_name("hush-agent");
        let mut command = Command::new(&exe);
        command
            .args(["--vault", addr])
            .env("HUSH_JOIN_TOKEN", token)
            .arg("--state-dir")
            .arg(temp.join("agent"))
            .arg("--mount-root")
            .arg(temp.join(MOUNT_DIR))
            .arg("--socket")
            .arg(temp.join("agent.sock"))
            .arg(format!("--die-with-parent={}", rustix::process::getpid().as_raw_nonzero()))
            .stdout(Stdio::piped());
        let (started_tx, started) = std::sync::mpsc::channel();
        let (exited_tx, exited) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("dev-agent".into()).spawn(move || {
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let _ = started_tx.send(Err(anyhow::anyhow!("cannot start {}: {e}", exe.display())));
                    return;
                }
            };
            let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
            // The agent prints one line once it serves; anything else means it failed (its error
            // is on stderr).
            let ready = matches!(lines.next(), Some(Ok(line)) if line.starts_with("hush-agent: node"));
            let pid = rustix::process::Pid::from_child(&child);
            let _ = started_tx.send(if ready { Ok(pid) } else { Err(anyhow::anyhow!("the agent did not start")) });
            lines.for_each(drop);
            let _ = exited_tx.send(child.wait());
        })?;
        let pid = started.recv().context("the agent's thread ended")??;
        Ok(Self { pid, exited })
    }

    /// SIGTERM, then waits for it to exit.
    fn stop(self) {
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::TERM);
        let _ = self.exited.recv();
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    disable_core_dumps();
    lock_memory();
    for path in DevDir::remove_leftovers(MOUNT_DIR) {
        eprintln!("hush dev: removed {} (left by a hush dev that was killed)", path.display());
    }
    let temp = DevDir::create()?;
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
        match tokio::task::spawn_blocking(move || Agent::start(&temp_path, &addr, &token)).await? {
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
    if let Some(agent) = agent {
        tokio::task::spawn_blocking(move || agent.stop()).await?;
    }
    served?;
    drop(temp);
    Ok(ExitCode::SUCCESS)
}
