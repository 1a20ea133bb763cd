//! `hush-agent`: join (or reuse the saved identity), mount the FUSE view, serve the control
//! socket, and follow the vault's assignments until shutdown.

use crate::control::ControlService;
use crate::reconcile::Reconciler;
use crate::runtime::engine_api::EngineApi;
use crate::runtime::owner::ServiceOwner;
use crate::runtime::registry::Containers;
use crate::runtime::{Engine, EngineKind};
use crate::state::StateDir;
use crate::vault_link::{self, LinkEnd};
use anyhow::{Context, bail};
use hush_fuse::SecretFs;
use hush_proto::v1::agent_control_server::AgentControlServer;
use hush_proto::v1::node_client::NodeClient;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Vault address (host:port), or every replica's (a:7443,b:7443,c:7443: the agent moves to
    /// another when one fails); needed for the first join, replaces the saved list when given later
    #[arg(long, env = "HUSH_VAULT")]
    pub vault: Option<String>,
    /// Refused: a command line is readable by every local user (see --join-token-file)
    #[arg(long, hide = true, value_name = "TOKEN")]
    pub join_token: Option<String>,
    /// File holding the join token from `hush node join-token` (mode 0600; `-` reads standard
    /// input), or the token in HUSH_JOIN_TOKEN; needed for the first join only
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Where the node's key and certificate are kept (0600)
    #[arg(long, default_value = "/var/lib/hush-agent")]
    pub state_dir: PathBuf,
    /// Where the FUSE filesystem with every task's files is mounted
    #[arg(long, default_value = "/run/hush")]
    pub mount_root: PathBuf,
    /// Also write every access event as a JSON line here (`-` for standard output)
    #[arg(long, value_name = "FILE|-")]
    pub audit_log: Option<PathBuf>,
    /// Control socket for `hush run` (root only)
    #[arg(long, env = "HUSH_AGENT_SOCKET", default_value = crate::run::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Docker's Engine API socket: its containers can be tasks of services
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub docker_socket: PathBuf,
    /// Podman's API socket (`podman system service`), for Podman containers
    #[arg(long)]
    pub podman_socket: Option<PathBuf>,
    /// Threads serving the FUSE filesystem's requests (see `docs/SEMANTICS.md`, "Reading files")
    #[arg(long, value_name = "N", default_value_t = hush_fuse::MountConfig::default().threads as u16,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub fuse_threads: u16,
    /// Record no opens or reads of tasks' files (refusals still are): the vault is told and
    /// records `open_audit_off` for this node on every connection. For measuring what auditing
    /// costs; see SECURITY.md
    #[arg(long)]
    pub no_open_audit: bool,
    /// Shut down when the process PID, our parent, dies (what `hush dev` asks)
    #[arg(long, value_name = "PID", hide = true)]
    pub die_with_parent: Option<i32>,
}

impl AgentArgs {
    /// The FUSE session's tuning (`--fuse-threads`).
    pub fn mount_config(&self) -> hush_fuse::MountConfig {
        hush_fuse::MountConfig { threads: usize::from(self.fuse_threads) }
    }
}

/// Asks for SIGTERM (a clean shutdown) when our parent `parent` dies; fails if it already has.
/// Call it from the main thread: the kernel sends the signal when the thread that forked us ends.
pub fn die_with_parent(parent: i32) -> anyhow::Result<()> {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    set_parent_process_death_signal(Some(Signal::TERM)).context("cannot ask to die with the parent process")?;
    if getppid().map(|pid| pid.as_raw_nonzero().get()) != Some(parent) {
        bail!("the parent process {parent} is gone");
    }
    Ok(())
}

/// The mount root as the container engines name it: its parent resolved, itself not looked at
/// (it may be a live mount, or a dead one).
fn canonical_mount_root(mount_root: &std::path::Path) -> anyhow::Result<PathBuf> {
    let absolute =
        std::path::absolute(mount_root).with_context(|| format!("cannot resolve {}", mount_root.display()))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        bail!("the mount root {} cannot be /", mount_root.display());
    };
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let parent = std::fs::canonicalize(parent).with_context(|| format!("cannot resolve {}", parent.display()))?;
    Ok(parent.join(name))
}

/// How long a stopping agent waits for its control server to tell every `hush run` it ends.
const CONTROL_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn run(args: AgentArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    crate::hardening::harden();
    if args.join_token.is_some() {
        bail!(
            "--join-token is refused: every local user can read a command line (/proc/PID/cmdline), so this token may have leaked (revoke it: hush node join-token --rotate); pass a token with --join-token-file FILE (mode 0600) or in HUSH_JOIN_TOKEN"
        );
    }
    let state = StateDir::new(&args.state_dir);
    let mut joined_now = false;
    let identity = match state.load().context("reading the state dir")? {
        Some(identity) => identity,
        None => {
            let Some(token) = crate::join_token::read(args.join_token_file.as_deref())? else {
                bail!(
                    "this node has not joined a vault yet: pass --vault HOST:PORT and a join token (--join-token-file FILE or HUSH_JOIN_TOKEN)"
                );
            };
            // --vault overrides the replicas a token made by replicas on etcd lists.
            let listed = hush_proto::token::parse(&token).map(|t| t.vaults.join(",")).unwrap_or_default();
            let vault = match &args.vault {
                Some(vault) => vault.clone(),
                None if !listed.is_empty() => listed,
                None => bail!(
                    "this node has not joined a vault yet and its join token lists no vault address: pass --vault HOST:PORT"
                ),
            };
            let identity = vault_link::join(&vault, &token, &state).await?;
            tracing::info!(node = %identity.info.node_id, "joined the vault");
            joined_now = true;
            identity
        }
    };

    // Access events: bounded, never blocking the FUSE threads (overflow is counted).
    // A queue that holds memory only for waiting events (a sync_channel's slots were 10.5 MB).
    let (events_tx, events_rx) = hush_fuse::event_queue(65_536);
    let fs = SecretFs::new().with_event_sink(events_tx);
    let fs = Arc::new(if args.no_open_audit {
        tracing::warn!("--no-open-audit: opens and reads of tasks' files are not recorded (the vault is told)");
        crate::audit::disable_open_events();
        fs.without_open_events()
    } else {
        fs
    });
    let local_log: Option<crate::audit::LocalLog> = match &args.audit_log {
        Some(path) if path.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(path) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the audit log {}", path.display()))?,
        )),
        None => None,
    };
    // What a crashed agent left (its dead mount's device, its tasks), noted before the mount goes.
    let records = Arc::new(crate::task_record::Records::new(&args.state_dir));
    // A `systemctl restart` left the connection in systemd's store: taken first (served by
    // nobody until this agent serves it, so the mount is not looked at meanwhile).
    let from_store = crate::handover::take_from_store();
    let held = matches!(from_store, crate::handover::Start::Taken(_));
    let mut leftovers = crate::recovery::Leftovers::find(records.clone(), &args.mount_root, held);
    // As the engines will name bind sources. The parent only: the mount root itself may be a
    // predecessor's live mount, about to stop answering while it hands over, or a dead one.
    let canonical_root = canonical_mount_root(&args.mount_root)?;

    let vaults = args.vault.clone().unwrap_or_else(|| identity.info.vault.clone());
    let channel = vault_link::node_channel(&identity, &vaults).map_err(anyhow::Error::msg)?;
    let stream_channels = vault_link::replica_channels(&identity, &vaults).map_err(anyhow::Error::msg)?;
    // Service directories are owned by "containers of the service"; the registry that decides
    // it needs the reconciler, so it is filled in right after.
    let registry = Arc::new(std::sync::OnceLock::new());
    let owners = registry.clone();
    let reconciler = Arc::new(Reconciler::new(fs.clone()).with_service_dirs(Box::new(move |service: &str| {
        hush_fuse::TaskOwner::new(ServiceOwner { containers: owners.clone(), service: service.to_string() })
    })));
    let mut engines: Vec<(EngineKind, PathBuf)> = vec![(EngineKind::Docker, args.docker_socket.clone())];
    engines.extend(args.podman_socket.iter().map(|socket| (EngineKind::Podman, socket.clone())));
    let mut clients: Vec<Arc<dyn Engine>> = Vec::new();
    for (kind, socket) in &engines {
        clients.push(Arc::new(EngineApi::connect(*kind, socket).map_err(anyhow::Error::msg)?));
    }
    let containers = Arc::new(Containers::new(
        clients.clone(),
        &canonical_root,
        NodeClient::new(channel.clone()),
        reconciler.clone(),
        tokio::runtime::Handle::current(),
    ));
    let _ = registry.set(containers.clone());

    // Everything is ready to serve: only now ask a running predecessor to hand over (its readers
    // wait from here until we serve).
    let mut started = crate::startup::start(&args, from_store, &fs, &reconciler, &containers)?;
    // The audit trail records every start but the first: a takeover at once, a recovery from a
    // crash once its views are repaired (see recovery::repair_views).
    let (audit, audit_requests) = crate::audit::Pending::channel();
    let crashed = started.report.how == "fresh" && leftovers.crashed();
    if !joined_now && !crashed {
        audit.record_restart(started.report.describe());
    }
    leftovers.mounted().context("recording the mount in the state dir")?;
    if let Err(e) = started.report.save(&args.state_dir) {
        tracing::warn!(error = %e, "cannot record how this start went (hush-agent status)");
    }
    let mount = Arc::new(started.mount);
    let giver = Arc::new(crate::handover::Giver {
        mount: mount.clone(),
        fs: fs.clone(),
        reconciler: reconciler.clone(),
        containers: containers.clone(),
        takeovers: started.report.takeovers,
        audit: audit.clone(),
    });
    let handover = tokio::spawn(giver.clone().serve(crate::handover::listen(&args.state_dir)?));

    let followers: Vec<_> = engines
        .iter()
        .map(|(kind, socket)| tokio::spawn(containers.clone().follow(*kind, socket.display().to_string())))
        .collect();
    let _ = std::fs::remove_file(&args.socket);
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("cannot listen on {}", args.socket.display()))?;
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let control = ControlService {
        vault: NodeClient::new(channel.clone()),
        reconciler: reconciler.clone(),
        mount_root: args.mount_root.clone(),
        stopping: stopped.clone(),
        records: records.clone(),
        restored: Default::default(),
    };
    // After a crash, or a hand-over: the tasks that still run are served again (before the
    // assignment stream tells the vault which tasks run here), and after a crash every view is
    // repaired once their files are back (a hand-over kept the mount: nothing to repair).
    let restored = leftovers.restore_tasks(&control, &NodeClient::new(channel.clone()));
    for task_id in &started.resumable {
        if !restored.iter().any(|r| &r.task_id == task_id) {
            // Taken over, but its hush run is gone: restore_tasks ended it at the vault.
            reconciler.task_ended(task_id);
        }
    }
    tokio::spawn(crate::recovery::repair_views(
        crate::recovery::Views {
            devices: leftovers.views(),
            crash: crashed.then(|| crate::recovery::Crash {
                audit: audit.clone(),
                report: started.report.clone(),
                state_dir: args.state_dir.clone(),
            }),
        },
        canonical_root.clone(),
        restored,
        clients,
        reconciler.clone(),
        control.restored.clone(),
        records,
    ));

    let stop = Arc::new(stop);
    let on_signal = stop.clone();
    // Weak: an agent that ends otherwise (its node removed) must still hold the last reference
    // to its mount at the end, to unmount it.
    let giver = Arc::downgrade(&giver);
    tokio::spawn(async move {
        shutdown.await;
        let systemd = crate::handover::systemd::supervised();
        // `systemctl restart`: the mount stays, its connection and state in systemd's store.
        if systemd
            && let Some(max) = crate::handover::systemd::restarting().await
            && let Some(giver) = giver.upgrade()
            && let Ok(Err(e)) = tokio::task::spawn_blocking(move || giver.hand_to_store(max)).await
        {
            tracing::error!(error = %format!("{e:#}"), "cannot hand over through systemd: stopping");
        }
        if systemd {
            crate::handover::systemd::stopping();
        }
        let _ = on_signal.send(true);
    });
    let mut control_stopped = stopped.clone();
    let control_server = tokio::spawn(
        tonic::transport::Server::builder().add_service(AgentControlServer::new(control)).serve_with_incoming_shutdown(
            crate::peer::incoming(listener),
            async move {
                let _ = control_stopped.wait_for(|s| *s).await;
            },
        ),
    );
    println!(
        "hush-agent: node {} serving tasks under {} (control socket {})",
        identity.info.node_id,
        args.mount_root.display(),
        args.socket.display()
    );
    if crate::handover::systemd::supervised() {
        crate::handover::systemd::ready();
    }

    let shipper = crate::audit::Shipper {
        events: events_rx,
        pending: audit_requests,
        carried: std::mem::take(&mut started.audit),
        fs,
        reconciler: reconciler.clone(),
        vault: NodeClient::new(channel.clone()),
        local_log,
        node_id: identity.info.node_id.clone(),
    };
    let shipping = tokio::spawn(shipper.run(stopped.clone()));
    let end = vault_link::follow_assignments(stream_channels, reconciler.clone(), stopped).await;
    // However the agent ends (a removed node too), its tasks end first: their `hush run`
    // stops them, so no task's mount namespace holds the mount when it goes (unmounting
    // would wait for that, up to two seconds).
    stop.send_replace(true);
    // The control server shuts down gracefully: each `hush run` still gets the message that its
    // task ends (aborting it at once could drop that message, and `hush run` would then wait
    // `--reconnect-timeout` for an agent that is not coming back).
    let mut control_server = control_server;
    if tokio::time::timeout(CONTROL_DRAIN, &mut control_server).await.is_err() {
        control_server.abort();
    }
    for follower in followers {
        follower.abort();
    }
    if matches!(end, LinkEnd::Shutdown) {
        let _ = shipping.await;
    } else {
        shipping.abort();
    }
    let _ = std::fs::remove_file(&args.socket);
    handover.abort();
    let _ = handover.await;
    reconciler.clear();
    // The last reference now: dropping it unmounts.
    drop(mount);
    match end {
        LinkEnd::Shutdown => Ok(()),
        LinkEnd::Revoked(reason) => bail!("this node was removed from the vault ({reason}): its tasks' files are gone"),
    }
}
