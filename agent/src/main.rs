//! `hush-agent`: the node daemon, and `hush-agent run` (what `hush run` executes).

/// Every freed block is zeroed before it is reused or returned, so plaintext that passed
/// through a buffer (a decoded message, a grown vector) does not linger in freed memory.
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> = zeroizing_alloc::ZeroAlloc(std::alloc::System);

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "hush-agent",
    version,
    about = "Hush node agent: serves tasks their secrets from memory",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: hush_agent::daemon::AgentArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command as a task of a service, with its secrets at /run/secrets (`hush run`)
    Run(hush_agent::run::RunArgs),
    /// How the agent with this state dir last started: taken over from a running agent (how many
    /// tasks and containers) or on a fresh mount
    Status {
        /// The agent's state dir
        #[arg(long, default_value = "/var/lib/hush-agent")]
        state_dir: std::path::PathBuf,
    },
    /// PID 1 of a task's PID namespace (started by `hush run`, not by hand)
    #[command(hide = true)]
    TaskInit(hush_agent::task_init::InitArgs),
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,hush_agent=info")),
        )
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging();
    match cli.command {
        // Single-threaded on purpose: it unshares its mount namespace first.
        Some(Command::Run(args)) => match hush_agent::run::run(args) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(125)
            }
        },
        Some(Command::Status { state_dir }) => match hush_agent::startup::status(&state_dir) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::TaskInit(args)) => ExitCode::from(hush_agent::task_init::run(args).clamp(0, 255) as u8),
        None => {
            if let Some(parent) = cli.agent.die_with_parent
                && let Err(e) = hush_agent::daemon::die_with_parent(parent)
            {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
            let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
            match runtime.block_on(hush_agent::daemon::run(cli.agent, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
