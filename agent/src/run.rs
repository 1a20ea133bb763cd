//! `hush run` / `hush-agent run`: starts a task of a service on this node. This process leaves the
//! host's mount namespace first (while single-threaded), asks the agent for the task, mounts its
//! files, then starts the task in its own PID namespace and supervises it to its end.
//!
//! # How a task ends
//! - The command exits: its init ([`crate::task_init`], PID 1 of the task's PID namespace) exits with
//!   its status, the kernel kills whatever the task left running, and `hush run` exits with that
//!   status (128 + N when a signal N killed the command, as shells report it).
//! - `hush run` gets SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 or SIGUSR2 (`timeout`, systemd, Ctrl-C):
//!   it passes the signal to the command (through the init) and keeps waiting for it.
//! - `hush run` is killed (SIGKILL): the init dies with it (`PR_SET_PDEATHSIG`), and with the init
//!   every process of the task. The agent sees the control call close and withdraws the task's files.
//! - The agent shuts down (or ends the task on purpose): the task's files are gone with it, so the
//!   task is stopped as `docker stop` stops a container: SIGTERM, then SIGKILL after `--stop-timeout`.
//! - The agent crashes (its call breaks without saying why): the task runs on while `hush run` asks
//!   the socket every 100 ms, for `--reconnect-timeout` seconds, for an agent that takes it back
//!   (`ResumeTask`: a restarted agent repairs the task's view and serves it again). If none does, the
//!   task is stopped as above.

use crate::caps;
use crate::task_init::FORWARDED;
use crate::task_ns::{self, MountPlan};
use anyhow::{Context, bail};
use hush_proto::v1 as pb;
use hush_proto::v1::agent_control_client::AgentControlClient;
use rustix::process::{Pid, Signal};
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint, Uri};

pub const DEFAULT_SOCKET: &str = "/run/hush-agent.sock";

#[derive(Debug, clap::Args)]
#[command(override_usage = "hush run [OPTIONS] --service <SERVICE> -- <COMMAND>...")]
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
    /// Add a Linux capability to Docker's default set (e.g. NET_ADMIN; ALL for every one)
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability from it (ALL for every one)
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Keep every capability and allow privilege gains (no no_new_privs): such a task can enter
    /// other tasks' namespaces and read their files
    #[arg(long)]
    pub privileged: bool,
    /// Seconds the task has to exit after SIGTERM once its agent is gone, before SIGKILL
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub stop_timeout: u64,
    /// Seconds a task whose agent crashed keeps running while waiting for a restarted agent to
    /// take it back, before it is stopped
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub reconnect_timeout: u64,
    /// Command and arguments (after `--`)
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// The agent's control socket as `hush run` reaches it for the task's whole life. The task's
/// view is set up in `hush run`'s own mount namespace: `/proc` there may be the task's, and
/// `/run` an overlay (to create `/run/secrets` in) that keeps what it looked up, so a restarted
/// agent's new socket at the same path would not be reached through them and `hush run` could
/// not take its task back. So the socket's directory is opened before any of that, and once the
/// task runs (its working directory its own) the socket is reached relative to that directory.
struct AgentSocket {
    dir: Option<std::os::fd::OwnedFd>,
    /// The path as given.
    shown: PathBuf,
}

impl AgentSocket {
    fn open(socket: &Path) -> Self {
        let parent = match socket.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = rustix::fs::open(
            parent,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok();
        Self { dir, shown: socket.to_path_buf() }
    }

    /// The path to connect to once the task runs: the socket's name, in its directory as it was
    /// opened (made this process's working directory).
    fn for_resume(&self) -> PathBuf {
        match (&self.dir, self.shown.file_name()) {
            (Some(dir), Some(name)) if rustix::process::fchdir(dir).is_ok() => PathBuf::from(name),
            _ => self.shown.clone(),
        }
    }
}

async fn connect(socket: &Path, shown: &Path) -> anyhow::Result<AgentControlClient<Channel>> {
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
            format!("cannot reach the agent at {} (is hush-agent running? set HUSH_AGENT_SOCKET)", shown.display())
        })?;
    Ok(AgentControlClient::new(channel))
}

/// Runs the task; returns the exit code to leave with.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    if !rustix::process::geteuid().is_root() {
        bail!("hush run needs root: it gives the task its own mount and PID namespaces");
    }
    let keep = caps::resolve(&args.cap_add, &args.cap_drop, args.privileged, caps::bounding_set())?;
    let socket = AgentSocket::open(&args.socket);
    // Must happen before any thread exists (the runtime below is single-threaded).
    task_ns::unshare_mount_namespace().context("cannot create the task's mount namespace")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        // Handlers first: from here on a SIGTERM is forwarded or ends the start, never kills us
        // halfway with the agent's task registered.
        let mut signals = Vec::new();
        for forwarded in FORWARDED {
            signals.push((forwarded, signal(SignalKind::from_raw(forwarded.as_raw()))?));
        }
        // Until the task runs, a signal ends the start (dropping the call ends the task at the agent).
        let start = async {
            let mut client = connect(&socket.shown, &socket.shown).await?;
            let request =
                pb::RunTaskRequest { service: args.service.clone(), name: args.name.clone().unwrap_or_default() };
            let mut events =
                client.run_task(request).await.map_err(|status| anyhow::anyhow!("{}", status.message()))?.into_inner();
            let first = events.message().await.map_err(|status| anyhow::anyhow!("{}", status.message()))?;
            let ready = first.and_then(|e| e.ready).context("the agent ended the task before it was ready")?;
            anyhow::Ok((ready, events))
        };
        let (ready, events) = tokio::select! {
            started = start => started?,
            signal = next_signal(&mut signals) => return Ok(128 + signal.as_raw()),
        };
        let plan = MountPlan {
            secrets_dir: (!ready.secrets_dir.is_empty()).then(|| PathBuf::from(&ready.secrets_dir)),
            files: ready.configs.iter().map(|c| (PathBuf::from(&c.source), PathBuf::from(&c.target))).collect(),
            mount_root: PathBuf::from(&ready.mount_root),
        };
        task_ns::apply(&plan).context("cannot set up the task's files")?;
        let init = spawn_init(&args, keep, &ready)?;
        // The call (and the connection) stays open while the task runs: the agent ends the task when
        // it closes.
        supervise(init, &mut signals, events, &args, &socket, &ready.task_id).await
    })
}

/// Starts the task's init in a new PID namespace, its own session (no controlling terminal: the
/// terminal's signals reach `hush run`, which forwards them once), dying with this process.
fn spawn_init(args: &RunArgs, keep: rustix::thread::CapabilitySet, ready: &pb::TaskReady) -> anyhow::Result<Child> {
    task_ns::unshare_pid_namespace().context("cannot create the task's PID namespace")?;
    let (reader, writer) = std::io::pipe().context("cannot make a pipe")?;
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg0("hush-init")
        .arg("task-init")
        .arg(format!("--caps={:x}", keep.bits()))
        .arg(format!("--parent-fd={}", reader.as_raw_fd()))
        .args((!args.privileged).then_some("--no-new-privs"))
        .arg("--")
        .args(&args.command)
        .env("HUSH_TASK_ID", &ready.task_id)
        .env("HUSH_TASK_NAME", &ready.name);
    die_with_parent(command.as_std_mut(), reader.as_raw_fd());
    let child = command.spawn().context("cannot start the task")?;
    drop(reader);
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32)).context("the task's init has no pid")?;
    Ok(Child { child, pid, _alive: writer })
}

/// The task's init as `hush run` holds it.
struct Child {
    child: tokio::process::Child,
    pid: Pid,
    /// Write end of the pipe the init checks at its start: closed when this process is gone.
    _alive: std::io::PipeWriter,
}

/// Waits for the task to end, forwarding signals to it; stops it if the agent goes away for good.
async fn supervise(
    mut init: Child,
    signals: &mut [(Signal, tokio::signal::unix::Signal)],
    mut events: Streaming<pb::RunTaskEvent>,
    args: &RunArgs,
    socket: &AgentSocket,
    task_id: &str,
) -> anyhow::Result<i32> {
    let lost = 'task: loop {
        let broken = loop {
            let forwarded = next_signal(signals);
            tokio::select! {
                status = init.child.wait() => return Ok(exit_code(status?)),
                signal = forwarded => { let _ = rustix::process::kill_process(init.pid, signal); }
                event = events.message() => match event {
                    Ok(Some(event)) if !event.ended.is_empty() => break 'task format!("lost the agent: {}", event.ended),
                    Ok(Some(_)) => {}
                    Ok(None) => break 'task "the agent ended the task".to_string(),
                    Err(status) => break status.message().to_string(),
                },
            }
        };
        // The call broke without a word: the agent crashed. A restarted agent may take the task back.
        tracing::debug!(error = %broken, "lost the agent; waiting for it to come back");
        match resume(&mut init, signals, args, socket, task_id).await? {
            Resumed::Yes(stream) => events = *stream,
            Resumed::Exited(code) => return Ok(code),
            Resumed::No(why) => break format!("lost the agent: {broken}; {why}"),
        }
    };
    // The task's files are gone: stop it as `docker stop` does.
    let _ = rustix::process::kill_process(init.pid, Signal::TERM);
    let stopped = tokio::time::timeout(Duration::from_secs(args.stop_timeout), init.child.wait()).await;
    if stopped.is_err() {
        let _ = rustix::process::kill_process(init.pid, Signal::KILL);
        let _ = init.child.wait().await;
    }
    bail!("{lost}; its files are gone, so the task was stopped")
}

/// How waiting for a restarted agent ended.
enum Resumed {
    /// An agent took the task back: its stream.
    Yes(Box<Streaming<pb::RunTaskEvent>>),
    /// The task exited meanwhile, with this code.
    Exited(i32),
    /// No agent took it back: why.
    No(String),
}

/// Asks the agent's socket every 100 ms, for `--reconnect-timeout`, to resume the task, while
/// the task runs on (its signals still forwarded).
async fn resume(
    init: &mut Child,
    signals: &mut [(Signal, tokio::signal::unix::Signal)],
    args: &RunArgs,
    socket: &AgentSocket,
    task_id: &str,
) -> anyhow::Result<Resumed> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.reconnect_timeout);
    let path = socket.for_resume();
    loop {
        let attempt = async {
            let mut client = connect(&path, &socket.shown).await.map_err(|_| None)?;
            let request = pb::ResumeTaskRequest { task_id: task_id.to_string() };
            let mut stream = client.resume_task(request).await.map_err(refusal)?.into_inner();
            match stream.message().await {
                Ok(Some(event)) if event.ready.is_some() => Ok(stream),
                Ok(_) => Err(Some("the agent ended the task".to_string())),
                Err(status) => Err(refusal(status)),
            }
        };
        tokio::select! {
            status = init.child.wait() => return Ok(Resumed::Exited(exit_code(status?))),
            signal = next_signal(signals) => { let _ = rustix::process::kill_process(init.pid, signal); }
            result = attempt => match result {
                Ok(stream) => return Ok(Resumed::Yes(Box::new(stream))),
                Err(Some(refused)) => return Ok(Resumed::No(refused)),
                Err(None) if tokio::time::Instant::now() >= deadline => {
                    return Ok(Resumed::No(format!("no agent took the task back within {} s", args.reconnect_timeout)));
                }
                Err(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
        }
    }
}

/// A final refusal (`Some`: the agent answered it does not run this task) or a reason to try
/// again (`None`: no agent answers yet).
fn refusal(status: tonic::Status) -> Option<String> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => None,
        _ => Some(format!("the restarted agent refused the task: {}", status.message())),
    }
}

/// The next of the forwarded signals that arrives.
async fn next_signal(signals: &mut [(Signal, tokio::signal::unix::Signal)]) -> Signal {
    std::future::poll_fn(|cx| {
        for (signal, stream) in signals.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*signal);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// In the child, before it executes the init: SIGKILL when this process dies (the thread that forks
/// is the main thread, which lives as long as the process), and a new session. `keep_fd` (the
/// pipe's read end) stays open across the exec.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut std::process::Command, keep_fd: i32) {
    use std::os::unix::process::CommandExt;
    let hook = move || {
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        rustix::process::setsid()?;
        // SAFETY: the descriptor is open in the child (inherited from the parent, which holds it
        // until the spawn returns) and only its flags are changed.
        let fd = unsafe { rustix::fd::BorrowedFd::borrow_raw(keep_fd) };
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
        Ok(())
    };
    // SAFETY: the hook makes only raw system calls (prctl, setsid, fcntl): no allocation, no lock,
    // nothing that is unsafe between fork and exec.
    unsafe { command.pre_exec(hook) };
}
