//! The containers this agent knows: from a caller's pid to a verified container task of a
//! service, cached per container; tasks started on the vault when a container is first seen
//! (its first open, or its `create`/`start` event) and ended when it dies.
//!
//! # What makes a container a task of service S
//! 1. the caller's cgroup names a container of a configured engine, and the caller is in that
//!    container's mount namespace (host root writing itself into the container's cgroup is not);
//! 2. the engine says the container runs, carries `io.hush.service=S`, and bind-mounts
//!    `MOUNT_ROOT/services/S` (or a path under it);
//! 3. a swarm task (label `com.docker.swarm.task.id`) is checked against the swarm's own task
//!    record: that task runs this container, and the service spec asked for `io.hush.service=S`
//!    (a plain container's labels can be set by anyone with the Engine API). The manager records
//!    a task's container only after the worker reports it, in batches, so a container can run
//!    (and open files) before its record names it: a record naming no container yet is asked
//!    again for up to [`SWARM_RECORD_GRACE`], and is never a cached refusal;
//! 4. this node may run S (the vault sends this node S's files only if it may).
//!
//! Decisions about a container are cached until it ends (its labels and mounts cannot change);
//! transient failures (engine or vault unreachable, not started yet, not yet in the swarm's
//! record) are not.

use super::proc::{self, IdMap};
use super::{ContainerEvent, ContainerInfo, Engine, EngineKind, RunState, SERVICE_LABEL, SWARM_TASK_LABEL};
use crate::reconcile::Reconciler;
use crate::vault_link::NodeChannel;
use futures::StreamExt;
use hush_proto::v1 as pb;
use hush_proto::v1::node_client::NodeClient;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::OnceCell;

/// Longest a first open waits for the engine and the vault (a cached container answers at once).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a container may stay `created` after its first process already opened a file. A
/// `created` container's process can only run once its start is under way (runc holds it at the
/// exec fifo until then), so waiting is safe; on a loaded node podman took over 1 s to record
/// the start (the first `cat` was refused), so the wait is most of the resolve budget.
const START_GRACE: Duration = Duration::from_millis(2_500);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a swarm task's record may name no container yet: the manager records a task's
/// container from the worker's status reports, which it commits in batches, so the container can
/// be running (and opening files) before its record names it.
const SWARM_RECORD_GRACE: Duration = Duration::from_secs(2);
/// Running containers are checked against the engine this often, in case an event was missed.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A container verified as a task of a service.
#[derive(Debug)]
pub struct ContainerTask {
    pub engine: EngineKind,
    pub id: String,
    pub name: String,
    pub image: String,
    pub service: String,
    /// The task's ID on the vault.
    pub task_id: String,
    /// The container's mount namespace (its first process's).
    mnt_ns: u64,
    uid_map: IdMap,
    gid_map: IdMap,
}

impl ContainerTask {
    /// Host uid/gid as the container sees them (through its user namespace's maps).
    pub fn inside_ids(&self, uid: u32, gid: u32) -> (u32, u32) {
        (self.uid_map.inside(uid), self.gid_map.inside(gid))
    }
}

/// A [`ContainerTask`] as handed to a successor agent.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ContainerTaskState {
    pub engine: EngineKind,
    pub id: String,
    pub name: String,
    pub image: String,
    pub service: String,
    pub task_id: String,
    pub mnt_ns: u64,
    pub uid_map: IdMap,
    pub gid_map: IdMap,
}

/// Why a caller is not (or not yet) a container task of the service it opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// A short `CamelCase` word recorded in the audit trail.
    pub reason: &'static str,
    /// The container, when one was found (for the audit entry).
    pub container: Option<(String, String, String)>,
}

impl Refusal {
    fn bare(reason: &'static str) -> Self {
        Self { reason, container: None }
    }

    fn of(reason: &'static str, info: &ContainerInfo) -> Self {
        Self { reason, container: Some((info.id.clone(), info.name.clone(), info.image.clone())) }
    }
}

/// A cached decision about one container: a task, or a refusal that cannot change.
#[derive(Clone, Debug)]
enum Outcome {
    Task(Arc<ContainerTask>),
    Refused(Refusal),
}

type Slot = Arc<OnceCell<Outcome>>;

pub struct Containers {
    engines: HashMap<EngineKind, Arc<dyn Engine>>,
    /// `MOUNT_ROOT/services`, as the engines see the bind sources.
    services_root: PathBuf,
    proc_root: PathBuf,
    vault: NodeClient<NodeChannel>,
    reconciler: Arc<Reconciler>,
    runtime: tokio::runtime::Handle,
    slots: Mutex<HashMap<String, Slot>>,
}

impl Containers {
    /// `mount_root` must be the canonical path of the FUSE mount (bind sources are compared as strings).
    pub fn new(
        engines: Vec<Arc<dyn Engine>>,
        mount_root: &Path,
        vault: NodeClient<NodeChannel>,
        reconciler: Arc<Reconciler>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            engines: engines.into_iter().map(|e| (e.kind(), e)).collect(),
            services_root: mount_root.join("services"),
            proc_root: PathBuf::from("/proc"),
            vault,
            reconciler,
            runtime,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn slot(&self, id: &str) -> Slot {
        self.lock().entry(id.to_string()).or_default().clone()
    }

    /// Whether the caller (process `pid`, in mount namespace `mnt_ns`) is a container task of
    /// `service`. Called on FUSE threads: answers from the cache, or waits (bounded) for the
    /// container's first resolution.
    pub fn check(&self, pid: u32, mnt_ns: u64, service: &str) -> Result<Arc<ContainerTask>, Refusal> {
        let (kind, id) = match proc::container_of(&self.proc_root, pid) {
            Ok(Some(found)) => found,
            // A host process, or a `hush run` task: not a container.
            Ok(None) => return Err(Refusal::bare("NotAContainer")),
            Err(_) => return Err(Refusal::bare("UnknownCaller")),
        };
        let slot = self.slot(&id);
        let outcome = match slot.get() {
            Some(outcome) => outcome.clone(),
            None => self.runtime.block_on(async {
                match tokio::time::timeout(RESOLVE_TIMEOUT, self.resolve_into(&slot, kind, &id)).await {
                    Ok(result) => result,
                    Err(_) => Err(Refusal::bare("EngineTimeout")),
                }
            })?,
        };
        let task = match outcome {
            Outcome::Task(task) => task,
            Outcome::Refused(refusal) => return Err(refusal),
        };
        let info = || Some((task.id.clone(), task.name.clone(), task.image.clone()));
        if mnt_ns != task.mnt_ns {
            // In the container's cgroup but not its namespace: host root moved itself there,
            // or a process that left the container's namespace (podman allows `unshare -m`).
            return Err(Refusal { reason: "NotInContainer", container: info() });
        }
        if task.service != service {
            return Err(Refusal { reason: "WrongService", container: info() });
        }
        Ok(task)
    }

    /// Resolves a container once (concurrent callers share the work), starting its task.
    async fn resolve_into(&self, slot: &Slot, kind: EngineKind, id: &str) -> Result<Outcome, Refusal> {
        let outcome = slot
            .get_or_try_init(|| async {
                let outcome = self.resolve(kind, id).await?;
                if let Outcome::Refused(refusal) = &outcome {
                    // Once per container: every open of it is refused for this reason from now on.
                    tracing::info!(
                        container = id,
                        reason = refusal.reason,
                        "not a task of any service: its opens are refused"
                    );
                }
                Ok(outcome)
            })
            .await?
            .clone();
        // The container may have died while we resolved it: then its slot is gone, and so must
        // the task be.
        let current = self.lock().get(id).is_some_and(|s| Arc::ptr_eq(s, slot));
        if !current && let Outcome::Task(task) = &outcome {
            self.end_task(task).await;
            return Err(Refusal::bare("ContainerEnded"));
        }
        Ok(outcome)
    }

    async fn resolve(&self, kind: EngineKind, id: &str) -> Result<Outcome, Refusal> {
        let Some(engine) = self.engines.get(&kind) else {
            tracing::warn!(
                container = id,
                engine = kind.name(),
                "a container opened a service file, but this agent has no {} engine (see --podman-socket)",
                kind.name()
            );
            return Err(Refusal::bare("NoEngine"));
        };
        let started = tokio::time::Instant::now();
        let info = loop {
            let info = match engine.inspect(id).await {
                Ok(Some(info)) => info,
                Ok(None) => return Err(Refusal::bare("NoSuchContainer")),
                Err(e) => {
                    tracing::warn!(container = id, error = %e, "cannot inspect a container");
                    return Err(Refusal::bare("EngineUnavailable"));
                }
            };
            match info.state {
                RunState::Running => break info,
                // The first process runs before the engine records the start.
                RunState::Created if started.elapsed() < START_GRACE => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => return Err(Refusal::of("NotRunning", &info)),
            }
        };
        let Some(service) = info.labels.get(SERVICE_LABEL).cloned() else {
            return Ok(Outcome::Refused(Refusal::of("NoServiceLabel", &info)));
        };
        let dir = self.services_root.join(&service);
        let binds_dir = info.bind_sources.iter().any(|source| Path::new(source).starts_with(&dir));
        if !binds_dir {
            return Ok(Outcome::Refused(Refusal::of("NotBindingServiceDir", &info)));
        }
        if let Some(task_id) = info.labels.get(SWARM_TASK_LABEL) {
            let started = tokio::time::Instant::now();
            loop {
                let task = match engine.swarm_task(task_id).await {
                    Ok(task) => task,
                    Err(e) => {
                        tracing::warn!(container = id, error = %e, "cannot read the swarm task record");
                        return Err(Refusal::of("EngineUnavailable", &info));
                    }
                };
                match swarm_check(task.as_ref(), &info.id, &service) {
                    SwarmCheck::Runs => break,
                    SwarmCheck::Mismatch => return Ok(Outcome::Refused(Refusal::of("SwarmTaskMismatch", &info))),
                    // Not a verdict: a later open or event asks again.
                    SwarmCheck::NoContainerYet if started.elapsed() >= SWARM_RECORD_GRACE => {
                        tracing::debug!(container = id, task = %task_id, "the swarm has not recorded this task's container yet");
                        return Err(Refusal::of("SwarmTaskPending", &info));
                    }
                    SwarmCheck::NoContainerYet => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        if !self.reconciler.serves_service(&service) {
            return Err(Refusal::of("ServiceNotOnNode", &info));
        }
        let read = |what: &str| -> Result<IdMap, Refusal> {
            IdMap::read(&self.proc_root, info.pid, what).map_err(|_| Refusal::of("NotRunning", &info))
        };
        let (uid_map, gid_map) = (read("uid_map")?, read("gid_map")?);
        let mnt_ns = proc::mount_namespace(&self.proc_root, info.pid).map_err(|_| Refusal::of("NotRunning", &info))?;
        let request = pb::StartTaskRequest {
            service: service.clone(),
            name: info.name.clone(),
            container_id: info.id.clone(),
            container_name: info.name.clone(),
            image: info.image.clone(),
        };
        let task_id = match self.vault.clone().start_task(request).await {
            Ok(started) => started.into_inner().task_id,
            Err(status) => {
                tracing::warn!(container = %info.name, service, error = %status.message(), "cannot start the container's task on the vault");
                // Unreachable: a later open tries again. Refused (the service may not run here): so
                // does a later open, and is refused again.
                let reason = match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded => "VaultUnavailable",
                    _ => "VaultRefusedTask",
                };
                return Err(Refusal::of(reason, &info));
            }
        };
        self.reconciler.container_task_started(&task_id, &service);
        tracing::info!(task = %task_id, container = %info.name, id = %info.id, service, "container task started");
        Ok(Outcome::Task(Arc::new(ContainerTask {
            engine: kind,
            id: info.id,
            name: info.name,
            image: info.image,
            service,
            task_id,
            mnt_ns,
            uid_map,
            gid_map,
        })))
    }

    /// The container tasks known now, for a successor agent (see `crate::handover`).
    pub fn export(&self) -> Vec<ContainerTaskState> {
        self.lock()
            .values()
            .filter_map(|slot| match slot.get() {
                Some(Outcome::Task(t)) => Some(ContainerTaskState {
                    engine: t.engine,
                    id: t.id.clone(),
                    name: t.name.clone(),
                    image: t.image.clone(),
                    service: t.service.clone(),
                    task_id: t.task_id.clone(),
                    mnt_ns: t.mnt_ns,
                    uid_map: t.uid_map.clone(),
                    gid_map: t.gid_map.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Takes a predecessor's container tasks as known: their containers are not registered
    /// with the vault again (an engine that no longer runs one ends it at the next sweep).
    pub fn restore(&self, tasks: Vec<ContainerTaskState>) {
        let mut slots = self.lock();
        for t in tasks {
            self.reconciler.container_task_started(&t.task_id, &t.service);
            let task = ContainerTask {
                engine: t.engine,
                id: t.id.clone(),
                name: t.name,
                image: t.image,
                service: t.service,
                task_id: t.task_id,
                mnt_ns: t.mnt_ns,
                uid_map: t.uid_map,
                gid_map: t.gid_map,
            };
            slots.insert(t.id, Arc::new(OnceCell::new_with(Some(Outcome::Task(Arc::new(task))))));
        }
    }

    /// Resolves a container before its first open (on its `start` event, or at agent start).
    pub async fn prefetch(self: Arc<Self>, kind: EngineKind, id: String) {
        let slot = self.slot(&id);
        if let Err(refusal) = self.resolve_into(&slot, kind, &id).await {
            tracing::debug!(container = %id, reason = refusal.reason, "not (yet) a container task");
        }
    }

    /// The container ended: forget it, and end its task.
    pub async fn forget(&self, id: &str) {
        let slot = self.lock().remove(id);
        if let Some(Outcome::Task(task)) = slot.as_ref().and_then(|s| s.get()) {
            self.end_task(task).await;
        }
    }

    async fn end_task(&self, task: &ContainerTask) {
        self.reconciler.container_task_ended(&task.task_id);
        tracing::info!(task = %task.task_id, container = %task.name, "container task ended");
        // If the vault is unreachable now, the next SyncTasks tells it.
        let _ = self.vault.clone().end_task(pb::EndTaskRequest { task_id: task.task_id.clone() }).await;
    }

    /// Ends the tasks of containers the engine no longer runs (an event may have been missed).
    async fn sweep(&self, engine: &dyn Engine) {
        let known: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, slot)| matches!(slot.get(), Some(Outcome::Task(t)) if t.engine == engine.kind()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in known {
            if let Ok(info) = engine.inspect(&id).await
                && info.is_none_or(|i| i.state != RunState::Running)
            {
                self.forget(&id).await;
            }
        }
    }

    /// Follows one engine's events for the agent's life: resolves labelled containers as they
    /// start, ends tasks as they die, reconnects with backoff. Says once if the engine is absent.
    pub async fn follow(self: Arc<Self>, kind: EngineKind, socket: String) {
        let Some(engine) = self.engines.get(&kind).cloned() else { return };
        // Which services run here decides which containers are tasks: wait until it is known.
        self.reconciler.first_assignment().await;
        let mut backoff = BACKOFF_MIN;
        let mut warned = false;
        loop {
            let mut events = engine.events();
            // Adopt what already runs (an agent restart), then follow.
            match engine.labelled_containers().await {
                Ok(ids) => {
                    if warned {
                        tracing::info!(engine = kind.name(), socket, "container engine reachable again");
                    }
                    warned = false;
                    backoff = BACKOFF_MIN;
                    for id in ids {
                        tokio::spawn(self.clone().prefetch(kind, id));
                    }
                    self.sweep(engine.as_ref()).await;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(engine = kind.name(), socket, error = %e, "no container engine: serving hush run tasks only until it answers");
                        warned = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.tick().await;
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(ContainerEvent::Started { id, labels })) => {
                            if labels.contains_key(SERVICE_LABEL) {
                                tokio::spawn(self.clone().prefetch(kind, id));
                            }
                        }
                        Some(Ok(ContainerEvent::Ended { id })) => self.forget(&id).await,
                        Some(Err(e)) => {
                            tracing::warn!(engine = kind.name(), error = %e, "container events interrupted; reconnecting");
                            break;
                        }
                        None => break,
                    },
                    _ = sweep.tick() => self.sweep(engine.as_ref()).await,
                }
            }
            tokio::time::sleep(backoff).await;
        }
    }
}

/// What the swarm's record of a task says about a container that carries the task's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SwarmCheck {
    /// The task runs this container, and its spec asked for this service.
    Runs,
    /// No such task, another container, or another service: a forged label (cached).
    Mismatch,
    /// The task's spec asks for this service, but the record names no container yet.
    NoContainerYet,
}

fn swarm_check(task: Option<&super::SwarmTask>, container: &str, service: &str) -> SwarmCheck {
    let Some(task) = task else { return SwarmCheck::Mismatch };
    if task.container_labels.get(SERVICE_LABEL).map(String::as_str) != Some(service) {
        return SwarmCheck::Mismatch;
    }
    match task.container_id.as_str() {
        "" => SwarmCheck::NoContainerYet,
        id if id == container => SwarmCheck::Runs,
        _ => SwarmCheck::Mismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::SwarmTask;

    fn task(container_id: &str, service: &str) -> SwarmTask {
        SwarmTask {
            container_id: container_id.to_string(),
            container_labels: HashMap::from([(SERVICE_LABEL.to_string(), service.to_string())]),
        }
    }

    #[test]
    fn a_swarm_record_without_a_container_yet_is_no_verdict() {
        assert_eq!(swarm_check(Some(&task("c1", "api")), "c1", "api"), SwarmCheck::Runs);
        assert_eq!(swarm_check(Some(&task("", "api")), "c1", "api"), SwarmCheck::NoContainerYet);
        // A forged label: another container, another service, or no such task.
        assert_eq!(swarm_check(Some(&task("c2", "api")), "c1", "api"), SwarmCheck::Mismatch);
        assert_eq!(swarm_check(Some(&task("", "web")), "c1", "api"), SwarmCheck::Mismatch);
        assert_eq!(swarm_check(Some(&task("c1", "web")), "c1", "api"), SwarmCheck::Mismatch);
        assert_eq!(swarm_check(None, "c1", "api"), SwarmCheck::Mismatch);
    }
}
