//! Container runtimes: who a caller's container is, and when it ends.
//!
//! A container engine sits behind the small [`Engine`] trait: inspect a container, look up a
//! swarm task, stream container events. Docker and Podman both speak the Engine API and are
//! served by [`engine_api::EngineApi`] (the differences — how the cgroup names the container,
//! whether there is a swarm — are in [`EngineKind`]). [`registry::Containers`] turns a caller's
//! pid into a verified container task of a service ([`owner::ServiceOwner`] is what the FUSE
//! filesystem asks on every open of a service directory); `hush run` tasks are the other kind of
//! owner, their mount namespace (in `hush-fuse`).

pub mod engine_api;
pub mod owner;
pub mod proc;
pub mod registry;

use std::collections::HashMap;

/// The label a container carries to say which Hush service it is a task of.
pub const SERVICE_LABEL: &str = "io.hush.service";
/// Swarm's label naming the task a container runs (set by the swarm, checked against its record).
pub const SWARM_TASK_LABEL: &str = "com.docker.swarm.task.id";

/// Which engine a container belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EngineKind {
    Docker,
    Podman,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
        }
    }
}

/// Lifecycle state of a container, as inspect reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Created, not started yet (a first open can arrive just before inspect says `running`).
    Created,
    Running,
    /// Exited, dead, paused, being removed...: not a running container.
    Other,
}

/// What the engine says about a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full ID (64 hex).
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// The image as the container was created from it (a tag or an ID).
    pub image: String,
    pub state: RunState,
    /// Host pid of the container's first process (0 when not running).
    pub pid: u32,
    pub labels: HashMap<String, String>,
    /// Host paths bind-mounted into the container.
    pub bind_sources: Vec<String>,
}

/// A swarm task's record as the swarm manager holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmTask {
    /// The container the task runs (empty until it has one).
    pub container_id: String,
    /// Labels of the task's container spec (what the service asked for, not what a container claims).
    pub container_labels: HashMap<String, String>,
}

/// A container lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerEvent {
    /// Created or started: worth resolving before its first open.
    Started { id: String, labels: HashMap<String, String> },
    /// Died or was removed: its task ends.
    Ended { id: String },
}

/// Failures talking to an engine.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the {engine} engine is unreachable at {socket}: {reason}")]
    Unreachable { engine: &'static str, socket: String, reason: String },
    #[error("the {engine} engine answered an error: {0}", engine = .1)]
    Api(String, &'static str),
}

/// One container engine, reached through its API socket.
#[async_trait::async_trait]
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;

    /// The container, or `None` if the engine does not know it.
    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, RuntimeError>;

    /// A swarm task by ID, or `None` if there is no such task (or no swarm).
    async fn swarm_task(&self, task_id: &str) -> Result<Option<SwarmTask>, RuntimeError>;

    /// IDs of running containers carrying [`SERVICE_LABEL`] (to adopt them at start-up).
    async fn labelled_containers(&self) -> Result<Vec<String>, RuntimeError>;

    /// Container events from now on; the stream ends (or errs) when the engine goes away.
    fn events(&self) -> futures::stream::BoxStream<'static, Result<ContainerEvent, RuntimeError>>;
}
