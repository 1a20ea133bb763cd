//! How the agent comes up, in order of preference: take over from a live predecessor with the
//! same state dir (its connection, inodes, open files and contents: nobody notices,
//! [`crate::handover`]); otherwise mount afresh (a dead mount left by a crashed agent is
//! detached first).

use crate::daemon::AgentArgs;
use crate::handover::{self, Inherited, Start};
use crate::reconcile::Reconciler;
use crate::runtime::registry::Containers;
use anyhow::Context;
use hush_fuse::{MountConfig, MountGuard, SecretFs};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// How the last start went (`hush-agent status`, the audit trail).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StartReport {
    /// `took-over` (from a live predecessor) or `fresh` (a new mount).
    pub how: &'static str,
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
}

/// A started agent's mount, and what it took over.
pub struct Started {
    pub mount: MountGuard,
    pub report: StartReport,
    /// `hush run` tasks taken over, until their `hush run` reconnects.
    pub resumable: Vec<String>,
}

/// Starts serving `fs` at the mount root: taken over, or fresh.
pub fn start(
    args: &AgentArgs,
    fs: &Arc<SecretFs>,
    reconciler: &Arc<Reconciler>,
    containers: &Arc<Containers>,
) -> anyhow::Result<Started> {
    let began = Instant::now();
    let refused = match handover::take_over(&args.state_dir)? {
        Start::Taken(inherited) => return take(*inherited, args, fs, reconciler, containers, began),
        Start::Refused(why) => {
            eprintln!("hush-agent: {why}");
            Some(why)
        }
        Start::Fresh => None,
    };
    let mount = fresh(args, fs)?;
    Ok(Started { mount, report: StartReport { how: "fresh", refused, ..Default::default() }, resumable: Vec::new() })
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
    let pid = handshake.pid;
    if let Err(e) = fs.import(state.fs, contents, namespaces, &|id| reconciler.service_dir_owner(id)) {
        handshake.refuse();
        eprintln!("hush-agent: cannot use the running agent's hand-over ({e}): starting afresh");
        let mount = fresh(args, fs)?;
        let report = StartReport { how: "fresh", refused: Some(e.to_string()), ..Default::default() };
        return Ok(Started { mount, report, resumable: Vec::new() });
    }
    let resumable = reconciler.restore(fs.served(), state.services);
    let containers_taken_over = state.container_tasks.len();
    containers.restore(state.container_tasks);
    let mount =
        match hush_fuse::resume(fs.clone(), &args.mount_root, device, state.fuse_version, &MountConfig::default()) {
            Ok(mount) => mount,
            Err(e) => {
                handshake.refuse();
                return Err(e).context("cannot serve the running agent's connection");
            }
        };
    handshake.accept()?;
    // Requests the predecessor read but never answered: sent again, now to us.
    if let Err(e) = mount.resend() {
        tracing::warn!(error = %e, "FUSE_NOTIFY_RESEND failed: requests the previous agent had read may hang");
    }
    let report = StartReport {
        how: "took-over",
        predecessor: Some(pid),
        tasks_taken_over: resumable.len(),
        containers_taken_over,
        takeovers: state.takeovers + 1,
        refused: None,
        switch_ms: began.elapsed().as_millis() as u64,
    };
    tracing::info!(
        predecessor = pid,
        tasks = report.tasks_taken_over,
        containers = report.containers_taken_over,
        switch_ms = report.switch_ms,
        "took over from the running agent"
    );
    Ok(Started { mount, report, resumable })
}

/// A new mount (after detaching a dead one left by a crashed agent).
fn fresh(args: &AgentArgs, fs: &Arc<SecretFs>) -> anyhow::Result<MountGuard> {
    // Until a dead mount is gone the path cannot even be stat'ed.
    if hush_fuse::clean_stale_mount(&args.mount_root).context("cleaning a stale mount")? {
        tracing::warn!(path = %args.mount_root.display(), "removed a stale mount left by an earlier agent");
    }
    std::fs::create_dir_all(&args.mount_root)
        .with_context(|| format!("cannot create {}", args.mount_root.display()))?;
    hush_fuse::mount(fs.clone(), &args.mount_root)
        .with_context(|| format!("cannot mount {}", args.mount_root.display()))
}
