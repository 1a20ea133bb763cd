//! How the agent comes up, in order of preference: take over what a predecessor left in
//! systemd's file descriptor store (`systemctl restart`), or from a live predecessor with the
//! same state dir (its connection, inodes, open files and contents: nobody notices,
//! [`crate::handover`]); otherwise mount afresh (a dead mount left by a crashed agent is
//! detached first).

use crate::daemon::AgentArgs;
use crate::handover::{self, Inherited, Start};
use crate::reconcile::Reconciler;
use crate::runtime::registry::Containers;
use anyhow::Context;
use hush_fuse::{MountGuard, SecretFs};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// How the last start went (`hush-agent status`, the audit trail).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StartReport {
    /// `took-over` (from a live predecessor) or `fresh` (a new mount).
    pub how: String,
    /// The predecessor's pid, when one handed over.
    pub predecessor: Option<i32>,
    /// `hush run` tasks taken over.
    pub tasks_taken_over: usize,
    /// Container tasks taken over.
    pub containers_taken_over: usize,
    /// Hand-overs this mount has been through, this one included.
    pub takeovers: u64,
    /// Why a predecessor's hand-over was not used, if it was not.
    pub refused: Option<String>,
    /// From asking the predecessor to serving (milliseconds).
    pub switch_ms: u64,
    /// How a predecessor handed over: `handover.sock` or `systemd` (its file descriptor store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through: Option<String>,
    /// After a crash, once the views are repaired: what was repaired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<String>,
}

impl StartReport {
    /// The report as a sentence (the audit trail's `agent_restart` reason; `status` says the same).
    pub fn describe(&self) -> String {
        match self.how.as_str() {
            "took-over" => format!(
                "took over from pid {}{} ({} tasks, {} containers; {} hand-overs of this mount; switch {} ms)",
                self.predecessor.unwrap_or(0),
                if self.through.as_deref() == Some("systemd") {
                    " through systemd's file descriptor store"
                } else {
                    ""
                },
                self.tasks_taken_over,
                self.containers_taken_over,
                self.takeovers,
                self.switch_ms
            ),
            _ => match (&self.refused, &self.recovered) {
                (Some(why), _) => format!("fresh mount (a hand-over was refused: {why})"),
                (None, Some(what)) => format!("recovered after a crash: fresh mount, {what}"),
                (None, None) => "fresh mount".to_string(),
            },
        }
    }
}

/// Where the last start's report is kept (no secret in it), for `hush-agent status`.
pub fn report_path(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("last-start.json")
}

impl StartReport {
    /// Saves the report (0600, replaced whole).
    pub fn save(&self, state_dir: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = report_path(state_dir);
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, &path)
    }
}

/// `hush-agent status`: how the agent last started, in one line.
pub fn status(state_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = report_path(state_dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("no agent has started with the state dir {} ({})", state_dir.display(), path.display())
    })?;
    let report: StartReport = serde_json::from_str(&text).with_context(|| format!("unreadable {}", path.display()))?;
    Ok(format!("last start: {}", report.describe()))
}

/// A started agent's mount, and what it took over.
pub struct Started {
    pub mount: MountGuard,
    pub report: StartReport,
    /// `hush run` tasks taken over, until their `hush run` reconnects.
    pub resumable: Vec<String>,
    /// Audit events the predecessor had not delivered.
    pub audit: Vec<hush_proto::v1::AccessEvent>,
}

/// Starts serving `fs` at the mount root: taken over (from systemd's store, `from_store`, as
/// [`handover::take_from_store`] found it, else from a running agent), or fresh.
pub fn start(
    args: &AgentArgs,
    from_store: Start,
    fs: &Arc<SecretFs>,
    reconciler: &Arc<Reconciler>,
    containers: &Arc<Containers>,
) -> anyhow::Result<Started> {
    let began = Instant::now();
    let start = match from_store {
        Start::Fresh => handover::take_over(&args.state_dir)?,
        other => other,
    };
    let refused = match start {
        Start::Taken(inherited) => return take(*inherited, args, fs, reconciler, containers, began),
        Start::Refused(why) => {
            eprintln!("hush-agent: {why}");
            Some(why)
        }
        Start::Fresh => None,
    };
    let mount = fresh(args, fs)?;
    let report = StartReport { how: "fresh".into(), refused, ..Default::default() };
    Ok(Started { mount, report, resumable: Vec::new(), audit: Vec::new() })
}

/// Answers the predecessor, if one waits (a hand-over through systemd's store has none).
fn refuse(handshake: Option<handover::Handshake>) {
    if let Some(handshake) = handshake {
        handshake.refuse();
    }
}

fn take(
    inherited: Inherited,
    args: &AgentArgs,
    fs: &Arc<SecretFs>,
    reconciler: &Arc<Reconciler>,
    containers: &Arc<Containers>,
    began: Instant,
) -> anyhow::Result<Started> {
    let Inherited { handshake, device, state, contents, namespaces } = inherited;
    let through = if handshake.is_some() { "handover.sock" } else { "systemd" };
    let pid = handshake.as_ref().map_or(state.pid as i32, |h| h.pid);
    let audit = match crate::handover::format::decode_events(&state.audit) {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(error = %e, "the predecessor's undelivered audit events are unreadable: dropped");
            vec![hush_proto::v1::AccessEvent {
                op: "dropped".into(),
                count: 1,
                time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                ..Default::default()
            }]
        }
    };
    if let Err(e) = fs.import(state.fs, contents, namespaces, &|id| reconciler.service_dir_owner(id)) {
        refuse(handshake);
        drop(device);
        eprintln!("hush-agent: cannot use the running agent's hand-over ({e}): starting afresh");
        let mount = fresh(args, fs)?;
        let report = StartReport { how: "fresh".into(), refused: Some(e.to_string()), ..Default::default() };
        return Ok(Started { mount, report, resumable: Vec::new(), audit });
    }
    let resumable = reconciler.restore(fs.served(), state.services);
    let containers_taken_over = state.container_tasks.len();
    containers.restore(state.container_tasks);
    let mount = match hush_fuse::resume(fs.clone(), &args.mount_root, device, state.fuse_version, &args.mount_config())
    {
        Ok(mount) => mount,
        Err(e) => {
            refuse(handshake);
            return Err(e).context("cannot serve the running agent's connection");
        }
    };
    if let Some(handshake) = handshake {
        handshake.accept()?;
    }
    // Requests the predecessor read but never answered: sent again, now to us.
    if let Err(e) = mount.resend() {
        tracing::warn!(error = %e, "FUSE_NOTIFY_RESEND failed: requests the previous agent had read may hang");
    }
    let report = StartReport {
        how: "took-over".into(),
        predecessor: Some(pid),
        tasks_taken_over: resumable.len(),
        containers_taken_over,
        takeovers: state.takeovers + 1,
        refused: None,
        switch_ms: began.elapsed().as_millis() as u64,
        through: Some(through.to_string()),
        recovered: None,
    };
    tracing::info!(
        predecessor = pid,
        tasks = report.tasks_taken_over,
        containers = report.containers_taken_over,
        switch_ms = report.switch_ms,
        through,
        "took over from the running agent"
    );
    Ok(Started { mount, report, resumable, audit })
}

/// A new mount (after detaching a dead one left by a crashed agent).
fn fresh(args: &AgentArgs, fs: &Arc<SecretFs>) -> anyhow::Result<MountGuard> {
    // Until a dead mount is gone the path cannot even be stat'ed.
    if hush_fuse::clean_stale_mount(&args.mount_root).context("cleaning a stale mount")? {
        tracing::warn!(path = %args.mount_root.display(), "removed a stale mount left by an earlier agent");
    }
    std::fs::create_dir_all(&args.mount_root)
        .with_context(|| format!("cannot create {}", args.mount_root.display()))?;
    hush_fuse::mount_with_config(fs.clone(), &args.mount_root, &args.mount_config())
        .with_context(|| format!("cannot mount {}", args.mount_root.display()))
}
