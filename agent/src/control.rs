//! The agent's control socket (Unix, root only): `hush run` asks here for a task. The task's
//! owner is the mount namespace of the process on the other end of the socket (from the
//! kernel's peer credentials, not from anything the caller claims).

use crate::reconcile::{Reconciler, SECRETS_DIR};
use hush_fuse::{MountNamespaceOwner, TaskOwner};
use hush_proto::v1 as pb;
use hush_proto::v1::agent_control_server::AgentControl;
use hush_proto::v1::node_client::NodeClient;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Code, Request, Response, Status};

/// How long a new task may wait for its files to arrive from the vault.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct ControlService {
    pub vault: NodeClient<Channel>,
    pub reconciler: Arc<Reconciler>,
    pub mount_root: PathBuf,
    /// Becomes true when the agent shuts down: every task ends (its `hush run` then stops it).
    pub stopping: watch::Receiver<bool>,
}

/// What a task's lifecycle needs from the service.
#[derive(Clone)]
struct Parts {
    vault: NodeClient<Channel>,
    reconciler: Arc<Reconciler>,
    mount_root: PathBuf,
    stopping: watch::Receiver<bool>,
}

impl ControlService {
    fn clone_parts(&self) -> Parts {
        Parts {
            vault: self.vault.clone(),
            reconciler: self.reconciler.clone(),
            mount_root: self.mount_root.clone(),
            stopping: self.stopping.clone(),
        }
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

    async fn run_task(&self, request: Request<pb::RunTaskRequest>) -> Result<Response<Self::RunTaskStream>, Status> {
        let pid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .and_then(|cred| cred.pid())
            .ok_or_else(|| Status::permission_denied("cannot identify the calling process"))?;
        // Held open for as long as the task lives: its inode number cannot be reused meanwhile.
        let namespace = MountNamespaceOwner::of_process(pid as u32)
            .map_err(|e| Status::internal(format!("reading the caller's namespace: {e}")))?;
        let own = hush_fuse::mount_namespace_of(std::process::id()).map_err(|e| Status::internal(e.to_string()))?;
        if namespace.inode() == own {
            // The host's namespace would make every host process an owner of the task's files.
            return Err(Status::failed_precondition("the caller must run in its own mount namespace (use `hush run`)"));
        }
        let request = request.into_inner();
        tracing::debug!(owner = ?namespace, "task owner");
        let owner = TaskOwner::new(namespace);
        let (tx, rx) = mpsc::channel(1);
        // The task's whole life runs on its own tokio task, never inside this call: a caller that
        // leaves (or is killed) at any moment drops only `rx`, which the lifecycle sees, so a start
        // under way is finished and then undone rather than abandoned halfway.
        tokio::spawn(lifecycle(self.clone_parts(), request, owner, pid as u32, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type Events = mpsc::Sender<Result<pb::RunTaskEvent, Status>>;

/// One task from `StartTask` to `EndTask`. `events` is the caller's stream: its first message is
/// the task's mounts (or the error), and it closes when the caller goes, which ends the task.
async fn lifecycle(mut parts: Parts, request: pb::RunTaskRequest, owner: TaskOwner, pid: u32, events: Events) {
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
    let lease = Lease::start(&parts, &task_id, owner);
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
    if events.send(Ok(pb::RunTaskEvent { ready: Some(ready) })).await.is_err() {
        return;
    }
    // The task lives as long as the caller's call (or the agent): when `hush run` exits, it ends.
    tokio::select! {
        () = events.closed() => {}
        () = stopped(&mut parts.stopping) => {
            let _ = events.send(Err(Status::unavailable("the agent is shutting down"))).await;
        }
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

/// A task registered here and at the vault. However it is dropped (the caller gone, an error, a
/// panic), its files are withdrawn and the vault is told.
struct Lease {
    reconciler: Arc<Reconciler>,
    vault: NodeClient<Channel>,
    task_id: String,
}

impl Lease {
    fn start(parts: &Parts, task_id: &str, owner: TaskOwner) -> Self {
        parts.reconciler.task_started(task_id, owner);
        Lease { reconciler: parts.reconciler.clone(), vault: parts.vault.clone(), task_id: task_id.to_string() }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.reconciler.task_ended(&self.task_id);
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
async fn end_at_vault(mut vault: NodeClient<Channel>, task_id: String) {
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
