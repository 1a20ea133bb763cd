//! The Engine API over a Unix socket (bollard): Docker's `/var/run/docker.sock`, or Podman's
//! compatible service socket (`podman system service`).

use super::{ContainerEvent, ContainerInfo, Engine, EngineKind, RunState, RuntimeError, SERVICE_LABEL, SwarmTask};
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Docker 20.10's API version; every field read here exists in it, and Podman 4 serves it.
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion { major_version: 1, minor_version: 41 };
/// Seconds any one API call may take (inspects answer in well under a millisecond).
const CALL_TIMEOUT: u64 = 5;

pub struct EngineApi {
    kind: EngineKind,
    socket: PathBuf,
    client: Docker,
}

impl EngineApi {
    /// A client for the engine at `socket` (nothing is sent until the first call).
    pub fn connect(kind: EngineKind, socket: &Path) -> Result<Self, RuntimeError> {
        let client = Docker::connect_with_socket(&socket.to_string_lossy(), CALL_TIMEOUT, &API_VERSION)
            .map_err(|e| unreachable(kind, socket, e))?;
        Ok(Self { kind, socket: socket.to_path_buf(), client })
    }

    /// Whether the engine answers a ping.
    pub async fn ping(&self) -> Result<(), RuntimeError> {
        self.client.ping().await.map(|_| ()).map_err(|e| unreachable(self.kind, &self.socket, e))
    }

    fn error(&self, e: BollardError) -> RuntimeError {
        match e {
            BollardError::DockerResponseServerError { message, .. } => RuntimeError::Api(message, self.kind.name()),
            other => unreachable(self.kind, &self.socket, other),
        }
    }
}

fn unreachable(kind: EngineKind, socket: &Path, e: BollardError) -> RuntimeError {
    RuntimeError::Unreachable { engine: kind.name(), socket: socket.display().to_string(), reason: e.to_string() }
}

fn not_found(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
}

#[async_trait::async_trait]
impl Engine for EngineApi {
    fn kind(&self) -> EngineKind {
        self.kind
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        let found = match self.client.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(found) => found,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let state = found.state.unwrap_or_default();
        let run_state = match (state.running, state.status.map(|s| s.to_string())) {
            (Some(true), _) => RunState::Running,
            (_, Some(status)) if status == "created" || status == "configured" || status == "initialized" => {
                RunState::Created
            }
            _ => RunState::Other,
        };
        let config = found.config.unwrap_or_default();
        let bind_sources = found
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.typ.as_deref() == Some("bind"))
            .filter_map(|m| m.source)
            .collect();
        Ok(Some(ContainerInfo {
            id: found.id.unwrap_or_else(|| id.to_string()),
            name: found.name.unwrap_or_default().trim_start_matches('/').to_string(),
            image: config.image.unwrap_or_default(),
            state: run_state,
            pid: state.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            labels: config.labels.unwrap_or_default(),
            bind_sources,
        }))
    }

    async fn swarm_task(&self, task_id: &str) -> Result<Option<SwarmTask>, RuntimeError> {
        if self.kind != EngineKind::Docker {
            return Ok(None);
        }
        let task = match self.client.inspect_task(task_id).await {
            Ok(task) => task,
            // No such task, or this engine is in no swarm or a worker of one (no record to check
            // against: moby's `errNoManager`). Any other 503 (no leader just now, a manager being
            // prepared, a locked swarm) is transient.
            Err(e) if not_found(&e) => return Ok(None),
            Err(BollardError::DockerResponseServerError { status_code: 503, message })
                if message.contains("docker swarm init") || message.contains("Worker nodes") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(self.error(e)),
        };
        let container_id =
            task.status.and_then(|s| s.container_status).and_then(|c| c.container_id).unwrap_or_default();
        let container_labels = task.spec.and_then(|s| s.container_spec).and_then(|c| c.labels).unwrap_or_default();
        Ok(Some(SwarmTask { container_id, container_labels }))
    }

    async fn labelled_containers(&self) -> Result<Vec<String>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), vec![SERVICE_LABEL.to_string()])]);
        let options = ListContainersOptions { all: false, filters: Some(filters), ..Default::default() };
        let list = self.client.list_containers(Some(options)).await.map_err(|e| self.error(e))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    fn events(&self) -> futures::stream::BoxStream<'static, Result<ContainerEvent, RuntimeError>> {
        let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
        let options = EventsOptions { filters: Some(filters), ..Default::default() };
        let (kind, socket) = (self.kind, self.socket.clone());
        self.client
            .events(Some(options))
            .filter_map(move |event| {
                let socket = socket.clone();
                async move {
                    let event = match event {
                        Ok(event) => event,
                        Err(e) => return Some(Err(unreachable(kind, &socket, e))),
                    };
                    let actor = event.actor.unwrap_or_default();
                    let id = actor.id.unwrap_or_default();
                    match event.action.as_deref().unwrap_or_default() {
                        "create" | "start" => {
                            Some(Ok(ContainerEvent::Started { id, labels: actor.attributes.unwrap_or_default() }))
                        }
                        // Docker says `die` and `destroy`; Podman's compatible API `died` and `remove`.
                        "die" | "died" | "destroy" | "remove" => Some(Ok(ContainerEvent::Ended { id })),
                        _ => None,
                    }
                }
            })
            .boxed()
    }
}
