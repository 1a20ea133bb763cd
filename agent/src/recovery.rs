//! What an agent that starts after a crash does about what the crashed one left behind: before
//! mounting, it notes the devices of the dead mounts ([`Leftovers::find`]); after mounting, it
//! restores each recorded `hush run` task whose process the kernel still shows in the recorded
//! mount namespace and ends the others ([`Leftovers::restore_tasks`]); once the vault's first
//! assignment is served, it repairs the view of each restored task and of each running container
//! of a service ([`repair_views`], through [`crate::repair`]).
//!
//! # Which namespace is whose
//! A `hush run` task: its record's pid is opened as a pidfd, the namespace is read through that
//! pidfd (`PIDFD_GET_MNT_NAMESPACE`: the namespace of exactly that process, and only while it
//! lives), and must have the recorded kernel namespace id (never reused while the system runs)
//! and the recorded start time. A process that reused the pid is in another namespace, started
//! later, and is given nothing; the task is ended. A container: the pid the engine reports must be
//! in that container's cgroup, read before the namespace is taken through the pidfd (which proves
//! the process read was still the one behind the pid).

use crate::control::{ControlService, Restored};
use crate::reconcile::Reconciler;
use crate::repair::{self, Device, Namespace, Outcome, View};
use crate::runtime::{Engine, RunState, SERVICE_LABEL};
use crate::task_record::{Records, TaskRecord, start_time};
use crate::vault_link::NodeChannel;
use hush_fuse::{MountNamespaceOwner, TaskOwner};
use hush_proto::v1::node_client::NodeClient;
use rustix::process::{Pid, PidfdFlags, pidfd_open};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the last agent left: dead mounts and task records.
pub struct Leftovers {
    records: Arc<Records>,
    mount_root: PathBuf,
    /// Devices of dead mounts of ours that namespaces may still hold.
    stale: Vec<Device>,
    tasks: Vec<TaskRecord>,
    new_device: Option<Device>,
    crashed: bool,
}

/// A restored task, to repair once its files are served.
pub struct RestoredTask {
    pub task_id: String,
    namespace: Namespace,
}

impl Leftovers {
    /// Call before the stale mount at `mount_root` is cleaned away (it names a dead device).
    /// `held`: this process holds the mount's connection (taken from systemd's store) and does
    /// not serve it yet, so the mount is not asked whether it is dead (nobody would answer).
    pub fn find(records: Arc<Records>, mount_root: &Path, held: bool) -> Self {
        let mut stale = records.devices();
        let dead = if held { Vec::new() } else { repair::dead_mounts_at(mount_root) };
        let crashed = !dead.is_empty();
        for device in dead {
            if !stale.contains(&device) {
                stale.push(device);
            }
        }
        let tasks = records.tasks();
        if !stale.is_empty() || !tasks.is_empty() {
            let devices: Vec<String> = stale.iter().map(Device::to_string).collect();
            tracing::warn!(tasks = tasks.len(), ?devices, "an earlier agent left tasks or mounts behind: restoring");
        }
        Self { records, mount_root: mount_root.to_path_buf(), stale, tasks, new_device: None, crashed }
    }

    /// Whether an earlier agent died serving the mount root (its mount was found dead).
    pub fn crashed(&self) -> bool {
        self.crashed
    }

    /// Call once the new FUSE mount is up: its device joins the recorded ones, so an agent that
    /// crashes before the repairs are done leaves all of them to the next one.
    pub fn mounted(&mut self) -> std::io::Result<()> {
        let root = rustix::fs::open(
            &self.mount_root,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let device = Device::of(&root)?;
        self.stale.retain(|d| *d != device);
        let mut devices = self.stale.clone();
        devices.push(device);
        self.records.save_devices(&devices)?;
        self.new_device = Some(device);
        Ok(())
    }

    /// Serves again each recorded task whose `hush run` still runs in the recorded namespace (see
    /// the module documentation); ends the others at the vault. Call before the assignment stream
    /// starts, so the vault hears these tasks still run.
    pub fn restore_tasks(&mut self, control: &ControlService, vault: &NodeClient<NodeChannel>) -> Vec<RestoredTask> {
        let mut restored = Vec::new();
        for record in std::mem::take(&mut self.tasks) {
            match verify(&record) {
                Ok((namespace, pidfd)) => {
                    let owner =
                        match MountNamespaceOwner::open(&format!("/proc/self/fd/{}", namespace.fd().as_raw_fd())) {
                            Ok(owner) => owner,
                            Err(e) => {
                                end(&self.records, vault, &record, "its namespace could not be held", &e.to_string());
                                continue;
                            }
                        };
                    tracing::info!(task = %record.task_id, pid = record.pid, "task still runs in its namespace");
                    let task_id = record.task_id.clone();
                    control.restore(record, TaskOwner::new(owner), pidfd);
                    restored.push(RestoredTask { task_id, namespace });
                }
                Err(why) => end(&self.records, vault, &record, why, ""),
            }
        }
        restored
    }

    /// The dead devices and the new mount's, for [`repair_views`] (None before [`Self::mounted`]).
    pub fn views(&self) -> Option<(Vec<Device>, Device)> {
        Some((self.stale.clone(), self.new_device?))
    }
}

/// Ends a recorded task that is not restored: the vault is told, the record removed.
fn end(records: &Records, vault: &NodeClient<NodeChannel>, record: &TaskRecord, why: &str, detail: &str) {
    tracing::warn!(task = %record.task_id, pid = record.pid, detail, "task left by the crashed agent ended: {why}");
    repair::count(Outcome::TaskEnded);
    records.remove_task(&record.task_id);
    tokio::spawn(crate::control::end_at_vault(vault.clone(), record.task_id.clone()));
}

/// The recorded task's namespace, if its `hush run` still runs there.
fn verify(record: &TaskRecord) -> Result<(Namespace, OwnedFd), &'static str> {
    let pid = Pid::from_raw(record.pid).ok_or("no pid recorded")?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(|_| "its hush run exited")?;
    let started = start_time(record.pid);
    let namespace = Namespace::of_process(&pidfd, record.pid).map_err(|_| "its hush run exited")?;
    // The namespace came through the pidfd; the start time by pid, so the pidfd must show the
    // process alive after it was read.
    if repair::exited(&pidfd) {
        return Err("its hush run exited");
    }
    if started != Some(record.start_time) {
        return Err("its pid belongs to another process now");
    }
    if !namespace.same(record.mntns_id, record.mntns_inode) {
        return Err("its pid is in another mount namespace now");
    }
    Ok((namespace, pidfd))
}

/// What [`repair_views`] repairs: the dead devices and the new mount's ([`Leftovers::views`]), and
/// where to record the recovery after a crash (`None`: not a crash, nothing recorded).
pub struct Views {
    pub devices: Option<(Vec<Device>, Device)>,
    pub crash: Option<Crash>,
}

/// Where a recovery after a crash is recorded: the audit trail (`agent_restart`) and the start
/// report (`hush-agent status`).
pub struct Crash {
    pub audit: crate::audit::Pending,
    pub report: crate::startup::StartReport,
    pub state_dir: PathBuf,
}

/// Once the first assignment is served: repairs each restored task (ending those that cannot be
/// repaired) and each running container of a service on `engines`. Then only the new mount's
/// device stays recorded, if every repair worked.
pub async fn repair_views(
    views: Views,
    mount_root: PathBuf,
    tasks: Vec<RestoredTask>,
    engines: Vec<Arc<dyn Engine>>,
    reconciler: Arc<Reconciler>,
    restored: Arc<Restored>,
    records: Arc<Records>,
) {
    let Views { devices: views, crash } = views;
    // After a crash, the audit trail and `hush-agent status` say so once the views are repaired.
    let record = |what: String| {
        if let Some(Crash { audit, report, state_dir }) = &crash {
            let report = crate::startup::StartReport { recovered: Some(what), ..report.clone() };
            audit.record_restart(report.describe());
            if let Err(e) = report.save(state_dir) {
                tracing::warn!(error = %e, "cannot record how this start went (hush-agent status)");
            }
        }
    };
    let Some((stale, new_device)) = views else {
        record("no view to repair".into());
        return;
    };
    if stale.is_empty() {
        record("no view to repair".into());
        return;
    }
    reconciler.first_assignment().await;
    let started = std::time::Instant::now();
    let mut failed = false;
    let mut repaired = 0;
    let mut ended = 0;
    for task in tasks {
        let view = View { new_root: mount_root.clone(), stale: stale.clone(), allowed: format!("/{}/", task.task_id) };
        let namespace = task.namespace;
        match tokio::task::spawn_blocking(move || repair::repair(&namespace, &view)).await {
            Ok(Ok(done)) => {
                tracing::info!(task = %task.task_id, replaced = ?done.replaced, beneath = done.beneath, skipped = ?done.skipped, "task view repaired");
                if !done.replaced.is_empty() {
                    repair::count(Outcome::TaskRepaired);
                    repaired += 1;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(task = %task.task_id, error = %e, "cannot repair the task's view: ending it");
                repair::count(Outcome::TaskEnded);
                restored.end(&task.task_id, "its files could not be restored after the agent restarted");
                failed = true;
                ended += 1;
            }
            Err(_) => failed = true,
        }
    }
    for engine in engines {
        let ids = match engine.labelled_containers().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(engine = engine.kind().name(), error = %e, "cannot list containers to repair");
                failed = true;
                continue;
            }
        };
        for id in ids {
            match repair_container(engine.as_ref(), &id, &mount_root, &stale).await {
                Ok(true) => {
                    repair::count(Outcome::ContainerRepaired);
                    repaired += 1;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "cannot repair the container's view");
                    failed = true;
                }
            }
        }
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(repaired, elapsed_ms, "views repaired after the crash");
    record(format!(
        "{repaired} views repaired in {elapsed_ms} ms{}",
        if ended > 0 { format!(", {ended} tasks ended (views not repairable)") } else { String::new() }
    ));
    if !failed && let Err(e) = records.save_devices(&[new_device]) {
        tracing::warn!(error = %e, "cannot record the mount's device");
    }
}

/// Repairs one container's view if it is a running container of a service; returns whether a
/// mount was replaced.
async fn repair_container(engine: &dyn Engine, id: &str, mount_root: &Path, stale: &[Device]) -> Result<bool, String> {
    let Some(info) = engine.inspect(id).await.map_err(|e| e.to_string())? else { return Ok(false) };
    let Some(service) = info.labels.get(SERVICE_LABEL).cloned() else { return Ok(false) };
    if info.state != RunState::Running || info.pid == 0 {
        return Ok(false);
    }
    let pid = info.pid as i32;
    let pidfd = pidfd_open(Pid::from_raw(pid).ok_or("no pid")?, PidfdFlags::empty()).map_err(|e| e.to_string())?;
    match crate::runtime::proc::container_of(Path::new("/proc"), info.pid) {
        Ok(Some((kind, cid))) if kind == engine.kind() && cid == info.id => {}
        _ => return Err(format!("pid {pid} is not in the container's cgroup")),
    }
    // Through the pidfd: the namespace of the process whose cgroup was just read, if it still lives.
    let namespace = Namespace::of_process(&pidfd, pid).map_err(|e| e.to_string())?;
    let view =
        View { new_root: mount_root.to_path_buf(), stale: stale.to_vec(), allowed: format!("/services/{service}/") };
    let done = tokio::task::spawn_blocking(move || repair::repair(&namespace, &view))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    tracing::info!(container = %info.name, service, replaced = ?done.replaced, beneath = done.beneath, skipped = ?done.skipped, "container view repaired");
    Ok(!done.replaced.is_empty())
}
