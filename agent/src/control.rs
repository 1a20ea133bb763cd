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
use tokio::sync::mpsc;
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
        let mut vault = self.vault.clone();
        let started = vault
            .start_task(pb::StartTaskRequest {
                service: request.service.clone(),
                name: request.name,
                ..Default::default()
            })
            .await
            .map_err(vault_error)?
            .into_inner();
        let task_id = started.task_id;
        let mut applied = self.reconciler.watch_applied();
        tracing::debug!(task = %task_id, owner = ?namespace, "task owner");
        self.reconciler.task_started(&task_id, TaskOwner::new(namespace));
        let ready = tokio::time::timeout(READY_TIMEOUT, applied.wait_for(|tasks| tasks.contains(&task_id)))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ready {
            self.reconciler.task_ended(&task_id);
            let _ = vault.end_task(pb::EndTaskRequest { task_id }).await;
            return Err(Status::deadline_exceeded("the task's files did not arrive from the vault in time"));
        }
        let task_dir = self.mount_root.join(&task_id);
        let secrets_prefix = format!("{SECRETS_DIR}/");
        let targets = self.reconciler.task_targets(&task_id);
        let has_secrets_dir = targets.iter().any(|(_, target)| target.starts_with(&secrets_prefix));
        let ready = pb::TaskReady {
            task_id: task_id.clone(),
            name: started.name,
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
            mount_root: self.mount_root.display().to_string(),
        };
        tracing::info!(task = %task_id, service = %request.service, pid, "task started");
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(pb::RunTaskEvent { ready: Some(ready) })).await.map_err(|_| Status::cancelled("caller left"))?;
        // The task lives as long as the caller's call: when `hush run` exits, the task ends.
        let reconciler = self.reconciler.clone();
        tokio::spawn(async move {
            tx.closed().await;
            reconciler.task_ended(&task_id);
            tracing::info!(task = %task_id, "task ended");
            // If the vault is unreachable now, the next SyncTasks tells it.
            let _ = vault.end_task(pb::EndTaskRequest { task_id }).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
