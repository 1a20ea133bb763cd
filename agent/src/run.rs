//! `hush run` / `hush-agent run`: starts a task of a service on this node. This process
//! becomes the task: it leaves the host's mount namespace first (while single-threaded), asks
//! the agent for the task, mounts its files, then runs the command and exits with its status.

use crate::task_ns::{self, MountPlan};
use anyhow::{Context, bail};
use hush_proto::v1 as pb;
use hush_proto::v1::agent_control_client::AgentControlClient;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint, Uri};

pub const DEFAULT_SOCKET: &str = "/run/hush-agent.sock";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Service whose secrets and configs the task gets
    #[arg(long)]
    pub service: String,
    /// Task name (default: SERVICE.<id>)
    #[arg(long)]
    pub name: Option<String>,
    /// The agent's control socket
    #[arg(long, env = "HUSH_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Command and arguments
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

async fn connect(socket: &Path) -> anyhow::Result<AgentControlClient<Channel>> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://agent.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .with_context(|| {
            format!("cannot reach the agent at {} (is hush-agent running? set HUSH_AGENT_SOCKET)", socket.display())
        })?;
    Ok(AgentControlClient::new(channel))
}

/// Runs the task; returns the exit code to leave with.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    if !rustix::process::geteuid().is_root() {
        bail!("hush run needs root: it gives the task its own mount namespace");
    }
    // Must happen before any thread exists (the runtime below is single-threaded).
    task_ns::unshare_mount_namespace().context("cannot create the task's mount namespace")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (ready, _task_call) = runtime.block_on(async {
        let mut client = connect(&args.socket).await?;
        let request = pb::RunTaskRequest { service: args.service.clone(), name: args.name.clone().unwrap_or_default() };
        let mut events =
            client.run_task(request).await.map_err(|status| anyhow::anyhow!("{}", status.message()))?.into_inner();
        let first = events.message().await.map_err(|status| anyhow::anyhow!("{}", status.message()))?;
        let ready = first.and_then(|e| e.ready).context("the agent ended the task before it was ready")?;
        // Keep the call (and the connection) open: the agent ends the task when it closes.
        anyhow::Ok((ready, (client, events)))
    })?;
    let plan = MountPlan {
        secrets_dir: (!ready.secrets_dir.is_empty()).then(|| PathBuf::from(&ready.secrets_dir)),
        files: ready.configs.iter().map(|c| (PathBuf::from(&c.source), PathBuf::from(&c.target))).collect(),
        mount_root: PathBuf::from(&ready.mount_root),
    };
    task_ns::apply(&plan).context("cannot set up the task's files")?;
    let status = std::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("HUSH_TASK_ID", &ready.task_id)
        .env("HUSH_TASK_NAME", &ready.name)
        .status()
        .with_context(|| format!("cannot run {}", args.command[0].to_string_lossy()))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
