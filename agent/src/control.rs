//! The agent's control socket (Unix, root only): `hush run` asks here for a task. The task's
//! owner is the mount namespace of the process on the other end of the socket, taken through a
//! pidfd on that very process ([`crate::peer`]), never from anything the caller claims.
//!
//! Each task is recorded in the state dir while it runs ([`crate::task_record`]). An agent that
//! starts after a crash restores the tasks whose record the kernel still agrees with
//! ([`ControlService::restore`]) and waits for their `hush run` to come back (`ResumeTask`, from
//! a process in the recorded namespace); a task whose `hush run` does not is ended.

use crate::reconcile::{Reconciler, SECRETS_DIR};
use crate::task_record::{Records, TaskRecord};
use crate::vault_link::NodeChannel;
use hush_fuse::{MountNamespaceOwner, TaskOwner};
use hush_proto::v1 as pb;
use hush_proto::v1::agent_control_server::AgentControl;
use hush_proto::v1::node_client::NodeClient;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

/// How long a new task may wait for its files to arrive from the vault.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a task restored after a crash waits for its `hush run` to resume it before it is
/// ended (`hush run` retries every 100 ms for its `--reconnect-timeout`).
const RESUME_WINDOW: Duration = Duration::from_secs(120);

/// What the agent says when it ends a task on purpose as it shuts down.
const SHUTTING_DOWN: &str = "the agent is shutting down";

pub struct ControlService {
    pub vault: NodeClient<NodeChannel>,
    pub reconciler: Arc<Reconciler>,
    pub mount_root: PathBuf,
    /// Becomes true when the agent shuts down: every task ends (its `hush run` then stops it).
    pub stopping: watch::Receiver<bool>,
    /// Where running tasks are recorded, for an agent that starts after a crash.
    pub records: Arc<Records>,
    /// Tasks restored after a crash (empty otherwise).
    pub restored: Arc<Restored>,
}

/// What a task's lifecycle needs from the service.
#[derive(Clone)]
struct Parts {
    vault: NodeClient<NodeChannel>,
    reconciler: Arc<Reconciler>,
    mount_root: PathBuf,
    stopping: watch::Receiver<bool>,
    records: Arc<Records>,
    restored: Arc<Restored>,
}

impl ControlService {
    fn clone_parts(&self) -> Parts {
        Parts {
            vault: self.vault.clone(),
            reconciler: self.reconciler.clone(),
            mount_root: self.mount_root.clone(),
            stopping: self.stopping.clone(),
            records: self.records.clone(),
            restored: self.restored.clone(),
        }
    }

    /// Serves a task a crashed agent left running again: its files go to `owner` (its verified
    /// namespace) from now on, and it waits for its `hush run` to resume it. It ends if that
    /// process exits, or does not resume it within [`RESUME_WINDOW`].
    pub fn restore(&self, record: TaskRecord, owner: TaskOwner, pidfd: OwnedFd) {
        let parts = self.clone_parts();
        let task_id = record.task_id.clone();
        let lease = Lease::start(&parts, record.clone(), owner);
        let (end, _) = watch::channel(None);
        let waiting = Waiting { lease: Some(lease), record, end };
        self.restored.lock().insert(task_id.clone(), waiting);
        tracing::info!(task = %task_id, "task restored after a crash; waiting for its hush run");
        let restored = self.restored.clone();
        tokio::spawn(async move {
            // A zero-timeout poll of the pidfd costs well under a microsecond.
            let exited = async {
                while !crate::repair::exited(&pidfd) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            let why = tokio::select! {
                () = exited => "its hush run exited",
                () = tokio::time::sleep(RESUME_WINDOW) => "its hush run did not come back",
            };
            // Still waiting (not resumed): end it.
            if let Some(lease) = restored.take_waiting(&task_id) {
                tracing::info!(task = %task_id, "restored task ended: {why}");
                drop(lease);
            }
        });
    }
}

/// Tasks restored after a crash, by task ID: waiting for their `hush run`, then running.
#[derive(Default)]
pub struct Restored {
    tasks: Mutex<HashMap<String, Waiting>>,
}

struct Waiting {
    /// Until `hush run` resumes the task (then its call holds the lease).
    lease: Option<Lease>,
    record: TaskRecord,
    /// Set to end the task on purpose (its view could not be repaired).
    end: watch::Sender<Option<String>>,
}

impl Restored {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends a restored task (waiting or resumed), saying why to its `hush run`.
    pub fn end(&self, task_id: &str, reason: &str) {
        let lease = {
            let mut tasks = self.lock();
            let Some(waiting) = tasks.get_mut(task_id) else { return };
            waiting.end.send_replace(Some(reason.to_string()));
            let lease = waiting.lease.take();
            if lease.is_some() {
                tasks.remove(task_id);
            }
            lease
        };
        drop(lease);
    }

    /// The lease of a task still waiting for its `hush run` (which then is not coming).
    fn take_waiting(&self, task_id: &str) -> Option<Lease> {
        let mut tasks = self.lock();
        let lease = tasks.get_mut(task_id)?.lease.take();
        tasks.remove(task_id);
        lease
    }

    /// Hands a waiting task to the `hush run` that resumes it, if that caller's mount namespace
    /// is the recorded one.
    fn resume(
        &self,
        task_id: &str,
        caller: &MountNamespaceOwner,
    ) -> Result<(Lease, String, watch::Receiver<Option<String>>), Status> {
        let mut tasks = self.lock();
        let Some(waiting) = tasks.get_mut(task_id) else {
            return Err(Status::not_found(format!("this agent does not run task {task_id}")));
        };
        let same = match (waiting.record.mntns_id, caller.id()) {
            (Some(recorded), Some(id)) => recorded == id,
            // The restored owner holds the namespace open: its inode is not reused meanwhile.
            _ => waiting.record.mntns_inode == caller.inode(),
        };
        if !same {
            return Err(Status::permission_denied("the caller is not in the task's mount namespace"));
        }
        let lease = waiting.lease.take().ok_or_else(|| Status::already_exists("the task was resumed already"))?;
        Ok((lease, waiting.record.name.clone(), waiting.end.subscribe()))
    }

    fn forget(&self, task_id: &str) {
        self.lock().remove(task_id);
    }
}

fn vault_error(status: Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => Status::unavailable(
            "the vault is unreachable: new tasks cannot start until it is back (running tasks keep their files)",
        ),
        _ => status,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunTaskEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControl for ControlService {
    type RunTaskStream = EventStream;
    type ResumeTaskStream = EventStream;

    async fn run_task(&self, request: Request<pb::RunTaskRequest>) -> Result<Response<Self::RunTaskStream>, Status> {
        // Held open for as long as the task lives: its inode number cannot be reused meanwhile.
        let (pid, namespace, start_time) = caller(&request)?;
        let own = hush_fuse::mount_namespace_of(std::process::id()).map_err(|e| Status::internal(e.to_string()))?;
        if namespace.inode() == own {
            // The host's namespace would make every host process an owner of the task's files.
            return Err(Status::failed_precondition("the caller must run in its own mount namespace (use `hush run`)"));
        }
        let request = request.into_inner();
        tracing::debug!(owner = ?namespace, "task owner");
        let ns = (namespace.id(), namespace.inode());
        let owner = TaskOwner::new(namespace);
        let (tx, rx) = mpsc::channel(1);
        // The task's whole life runs on its own tokio task, never inside this call: a caller that
        // leaves (or is killed) at any moment drops only `rx`, which the lifecycle sees, so a start
        // under way is finished and then undone rather than abandoned halfway.
        let caller = Caller { pid, ns, start_time: start_time.unwrap_or(0) };
        tokio::spawn(lifecycle(self.clone_parts(), request, owner, caller, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resume_task(
        &self,
        request: Request<pb::ResumeTaskRequest>,
    ) -> Result<Response<Self::ResumeTaskStream>, Status> {
        let (pid, caller, _) = caller(&request)?;
        let task_id = request.into_inner().task_id;
        let (lease, name, end) = self.restored.resume(&task_id, &caller)?;
        tracing::info!(task = %task_id, pid, "task resumed by its hush run");
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(resumed(self.clone_parts(), lease, name, end, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The pid, mount namespace and start time of the process on the other end of the control
/// socket (the kernel's peer credentials and a pidfd on that process: see [`crate::peer`]).
fn caller<T>(request: &Request<T>) -> Result<(u32, MountNamespaceOwner, Option<u64>), Status> {
    let peer = request
        .extensions()
        .get::<crate::peer::Peer>()
        .ok_or_else(|| Status::permission_denied("cannot identify the calling process"))?;
    let refused = |e: crate::peer::PeerError| match e {
        crate::peer::PeerError::Namespace(_) => Status::internal(e.to_string()),
        _ => Status::permission_denied(e.to_string()),
    };
    peer.check_uid().map_err(refused)?;
    peer.namespace().map_err(refused)
}

/// The `hush run` a task was registered for, as recorded for an agent that starts after a crash.
struct Caller {
    pid: u32,
    /// Its mount namespace: the kernel's id where there is one, and the inode.
    ns: (Option<u64>, u64),
    /// When the process started (`/proc/PID/stat`), so that a reused pid is told apart.
    start_time: u64,
}

/// A restored task from its `hush run`'s `ResumeTask` to its end, as [`lifecycle`]'s second half.
async fn resumed(
    mut parts: Parts,
    lease: Lease,
    name: String,
    mut end: watch::Receiver<Option<String>>,
    events: Events,
) {
    let ready = task_ready(&parts, &lease.task_id, name);
    if events.send(Ok(pb::RunTaskEvent { ready: Some(ready), ..Default::default() })).await.is_ok() {
        tokio::select! {
            () = events.closed() => {}
            () = stopped(&mut parts.stopping) => ended(&events, SHUTTING_DOWN).await,
            reason = async { end.wait_for(Option::is_some).await.ok().and_then(|r| r.clone()).unwrap_or_default() } => {
                ended(&events, &reason).await;
            }
        }
    }
    parts.restored.forget(&lease.task_id);
    drop(lease);
}

/// Tells `hush run` the agent ends its task on purpose (it stops the task at once).
async fn ended(events: &Events, reason: &str) {
    let _ = events.send(Ok(pb::RunTaskEvent { ready: None, ended: reason.to_string() })).await;
}

type Events = mpsc::Sender<Result<pb::RunTaskEvent, Status>>;

/// One task from `StartTask` to `EndTask`. `events` is the caller's stream: its first message is
/// the task's mounts (or the error), and it closes when the caller goes, which ends the task.
async fn lifecycle(mut parts: Parts, request: pb::RunTaskRequest, owner: TaskOwner, caller: Caller, events: Events) {
    let pid = caller.pid;
    tracing::debug!(service = %request.service, pid, "asking the vault for a task");
    // Not raced against the caller leaving: the vault may commit the task at any point of this
    // call, and only its answer says which task to end.
    let started = match parts
        .vault
        .start_task(pb::StartTaskRequest { service: request.service.clone(), name: request.name, ..Default::default() })
        .await
    {
        Ok(started) => started.into_inner(),
        Err(status) => {
            let _ = events.send(Err(vault_error(status))).await;
            return;
        }
    };
    let task_id = started.task_id.clone();
    let mut applied = parts.reconciler.watch_applied();
    let record = crate::task_record::new_record(
        &task_id,
        &request.service,
        &started.name,
        pid as i32,
        caller.ns,
        caller.start_time,
    );
    let lease = Lease::start(&parts, record, owner);
    let ready = tokio::select! {
        arrived = tokio::time::timeout(READY_TIMEOUT, applied.wait_for(|tasks| tasks.contains(&task_id))) => {
            arrived.is_ok_and(|r| r.is_ok())
        }
        () = events.closed() => return,
        () = stopped(&mut parts.stopping) => return,
    };
    if !ready {
        let _ =
            events.send(Err(Status::deadline_exceeded("the task's files did not arrive from the vault in time"))).await;
        return;
    }
    let ready = task_ready(&parts, &task_id, started.name);
    tracing::info!(task = %task_id, service = %request.service, pid, "task started");
    if events.send(Ok(pb::RunTaskEvent { ready: Some(ready), ..Default::default() })).await.is_err() {
        return;
    }
    // The task lives as long as the caller's call (or the agent): when `hush run` exits, it ends.
    tokio::select! {
        () = events.closed() => {}
        () = stopped(&mut parts.stopping) => ended(&events, SHUTTING_DOWN).await,
    }
    drop(lease);
}

/// Resolves once the agent is shutting down.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// The mounts `hush run` makes for an applied task.
fn task_ready(parts: &Parts, task_id: &str, name: String) -> pb::TaskReady {
    let task_dir = parts.mount_root.join(task_id);
    let secrets_prefix = format!("{SECRETS_DIR}/");
    let targets = parts.reconciler.task_targets(task_id);
    let has_secrets_dir = targets.iter().any(|(_, target)| target.starts_with(&secrets_prefix));
    pb::TaskReady {
        task_id: task_id.to_string(),
        name,
        secrets_dir: if has_secrets_dir {
            task_dir.join(crate::reconcile::fuse_path(SECRETS_DIR)).display().to_string()
        } else {
            String::new()
        },
        configs: targets
            .into_iter()
            .filter(|(_, target)| !target.starts_with(&secrets_prefix))
            .map(|(path, target)| pb::ConfigMount { source: task_dir.join(path).display().to_string(), target })
            .collect(),
        mount_root: parts.mount_root.display().to_string(),
    }
}

/// A task registered here and at the vault, and recorded in the state dir. However it is dropped
/// (the caller gone, an error, a panic), its files are withdrawn, its record removed and the vault
/// is told. A crash drops nothing: the record stays for the next agent.
struct Lease {
    reconciler: Arc<Reconciler>,
    vault: NodeClient<NodeChannel>,
    records: Arc<Records>,
    task_id: String,
}

impl Lease {
    fn start(parts: &Parts, record: TaskRecord, owner: TaskOwner) -> Self {
        if let Err(e) = parts.records.save_task(&record) {
            tracing::warn!(task = %record.task_id, error = %e, "cannot record the task: a crash of this agent would end it");
        }
        parts.reconciler.task_started(&record.task_id, owner);
        Lease {
            reconciler: parts.reconciler.clone(),
            vault: parts.vault.clone(),
            records: parts.records.clone(),
            task_id: record.task_id,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.reconciler.task_ended(&self.task_id);
        self.records.remove_task(&self.task_id);
        tracing::info!(task = %self.task_id, "task ended");
        let (vault, task_id) = (self.vault.clone(), std::mem::take(&mut self.task_id));
        // No runtime (the agent is exiting): the vault learns it from the next SyncTasks.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(end_at_vault(vault, task_id));
        }
    }
}

/// Tells the vault a task ended, retrying a while; if the vault stays unreachable, the next
/// SyncTasks (sent on every reconnection) tells it instead.
pub(crate) async fn end_at_vault(mut vault: NodeClient<NodeChannel>, task_id: String) {
    let mut backoff = Duration::from_millis(100);
    for _ in 0..6 {
        match vault.end_task(pb::EndTaskRequest { task_id: task_id.clone() }).await {
            Ok(_) => return,
            Err(status) if matches!(status.code(), Code::PermissionDenied | Code::NotFound) => return,
            Err(status) => {
                tracing::debug!(task = %task_id, error = %status.message(), "telling the vault a task ended")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}
