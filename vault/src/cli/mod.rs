//! The `hush` command line: argument definitions and dispatch. Each subcommand group lives in
//! its own module; all of them talk to the vault through [`crate::client`].

mod audit;
mod compose;
mod compose_docker;
mod dev;
mod dev_dir;
mod docker;
mod import;
mod input;
mod members;
mod nodes;
mod objects;
mod output;
mod services;
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
    /// Manage services: which secrets and configs their tasks get
    Service(services::ServiceArgs),
    /// Manage nodes (agents)
    Node(nodes::NodeArgs),
    /// Deploy compose files: their secrets, configs and services
    Compose(compose::ComposeArgs),
    /// Run a command as a task of a service, with its secrets at /run/secrets (needs a local agent)
    Run(RunArgs),
    /// Run Docker containers as tasks of a service (`hush docker run --service NAME ...`)
    Docker(EngineArgs),
    /// Run Podman containers as tasks of a service (`hush podman run --service NAME ...`)
    Podman(EngineArgs),
    /// Who read which secret, and every change: query, follow or verify the audit log
    Audit(audit::AuditArgs),
    /// Run a throw-away vault and agent on loopback for trying Hush out
    Dev(dev::DevArgs),
}

/// `hush run`: the task side lives with the agent (it sets up the task's namespaces and talks to the
/// agent's control socket), so `hush run` hands its arguments, `--help` included, to `hush-agent run`,
/// named `hush` so that its usage and errors say `hush run`.
#[derive(Debug, Args)]
#[command(
    disable_help_flag = true,
    override_usage = "hush run [OPTIONS] --service <SERVICE> -- <COMMAND>...",
    after_help = "Options: see `hush run --help`."
)]
pub struct RunArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., hide = true)]
    args: Vec<std::ffi::OsString>,
}

fn run_task(args: RunArgs) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let agent = exe.with_file_name("hush-agent");
    let agent = if agent.exists() { agent } else { PathBuf::from("hush-agent") };
    let error = std::process::Command::new(&agent).arg0("hush").arg("run").args(&args.args).exec();
    anyhow::bail!("cannot start {}: {error}", agent.display())
}

/// `hush docker ...` / `hush podman ...`.
#[derive(Debug, Args)]
pub struct EngineArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: EngineCommand,
}

#[derive(Debug, Subcommand)]
enum EngineCommand {
    /// `run` with the service's binds and label added; checks first that the agent serves it here
    Run(docker::RunArgs),
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

/// Whether `error` comes from writing to a pipe whose reader has gone.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Failure of one call, already worded for the user.
fn call_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(client::explain(&status))
}

/// Docker's multi-argument removal: each reference in turn, printed when done, an `error:` line
/// when not; the exit status fails if any failed.
async fn remove_each<F, Fut>(references: Vec<String>, mut remove: F) -> ExitCode
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut failed = false;
    for reference in references {
        match remove(reference.clone()).await {
            Ok(()) => println!("{reference}"),
            Err(status) => {
                eprintln!("error: {}", call_error(status));
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Vault(command) => vault::run(command).await,
        Command::Secret(args) => objects::run(Kind::Secret, args).await,
        Command::Config(args) => objects::run(Kind::Config, args).await,
        Command::Service(args) => services::run(args).await,
        Command::Node(args) => nodes::run(args).await,
        Command::Compose(args) => compose::run(args).await,
        Command::Run(args) => run_task(args),
        Command::Docker(EngineArgs { connection, command: EngineCommand::Run(args) }) => {
            docker::run(&connection, args, None).await
        }
        Command::Podman(EngineArgs { connection, command: EngineCommand::Run(args) }) => {
            docker::run(&connection, args, Some(docker::Runtime::Podman)).await
        }
        Command::Audit(args) => audit::run(args).await,
        Command::Dev(args) => dev::run(args).await,
    }
}
