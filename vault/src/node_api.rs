//! The node gRPC service (agents): join, the assignment stream, task start and end.
//! Converts proto ⇄ domain and decides nothing beyond "is this a live node".

use crate::assign::{Plan, plan_for};
use crate::audit::AuditEntry;
use crate::identity::{Peer, actor_of, peer_of};
use crate::join_gate::JoinGate;
use crate::nodes::{Claimed, NodeError, node_key};
use crate::services::ServiceError;
use crate::snapshots::send_plan;
use crate::store::{Expect, StoreError, Txn};
use crate::vault::Vault;
use hush_proto::v1 as pb;
use hush_proto::v1::node_server::Node;
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct NodeService {
    vault: Arc<Vault>,
    /// Refused joins per peer address (join_gate.rs).
    join_gate: Arc<JoinGate>,
    /// Audit events per node (reports.rs).
    reports: crate::reports::ReportLimiter,
    /// Open assignment streams per node (snapshots.rs).
    streams: crate::snapshots::StreamSlots,
}

impl NodeService {
    /// Needs a tokio runtime: it starts the task that records throttled joins.
    pub fn new(vault: Arc<Vault>) -> Self {
        let join_gate = Arc::new(JoinGate::default());
        join_gate.spawn_flusher(vault.clone());
        Self { vault, join_gate, reports: Default::default(), streams: Default::default() }
    }

    /// The calling node's ID, if its certificate is a node's and the node has not been removed.
    /// Refusals are audited as `denied`.
    async fn live_node<T>(&self, request: &Request<T>) -> Result<String, Status> {
        // A replica that cannot follow its store would never send a node a change: the agent
        // should go to another one.
        if let Err(why) = self.vault.store().health() {
            tracing::warn!(reason = %why, "refusing an agent call (and its assignment stream)");
            return Err(Status::unavailable(format!("this vault replica takes no new agent streams: {why}")));
        }
        let checked = async {
            let Peer::Node { id } = peer_of(request)? else {
                return Err(Status::permission_denied("this call needs a node certificate"));
            };
            self.vault.nodes()?.get(&id).await?;
            Ok(id)
        };
        match checked.await {
            Ok(id) => Ok(id),
            Err(status) => {
                self.vault.audit().record(AuditEntry::denied(actor_of(request), status.message())).await;
                Err(status)
            }
        }
    }
}

impl NodeService {
    /// Records a task of `service` on the node if placement allows it there (the vault, not the
    /// node, decides where a service runs). A refusal is audited as `denied`. The task is recorded
    /// only if neither the node nor the service changed since placement was decided.
    async fn place_task(
        &self,
        node_id: &str,
        service: &str,
        name: &str,
        container: Option<crate::tasks::Container>,
    ) -> Result<(crate::tasks::TaskRecord, crate::services::ServiceRecord), Status> {
        for _ in 0..PLACEMENT_RETRIES {
            let (service, service_revision) = self.vault.services()?.find(service).await?;
            let (node, node_revision) = self.vault.nodes()?.get_at(node_id).await?;
            if let Err(excluded) = crate::placement::may_run(&node, &service) {
                tracing::warn!(node = %node_id, service = %service.name, "task refused by placement");
                let entry = AuditEntry::denied(format!("node:{node_id}"), format!("start task: {excluded}"));
                let entry =
                    AuditEntry { node: Some(node_id.to_string()), service: Some(service.name.clone()), ..entry };
                self.vault.audit().record(entry).await;
                return Err(Status::permission_denied(excluded.to_string()));
            }
            let unchanged = Txn::new()
                .check(node_key(node_id), Expect::At(node_revision))
                .check(crate::services::obj_key(&service.id), Expect::At(service_revision));
            match self
                .vault
                .tasks()
                .start_if(unchanged, node_id, &service.id, &service.name, name, container.clone())
                .await
            {
                Ok(task) => return Ok((task, service)),
                // The node (its last-seen time, its labels) or the service changed: decide again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(Status::unavailable(e.to_string())),
            }
        }
        Err(Status::aborted("the node or the service kept changing while the task was starting: try again"))
    }
}

/// How often a task start is decided again when its node or service changed meanwhile.
const PLACEMENT_RETRIES: usize = 8;

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        match e {
            NodeError::MalformedToken | NodeError::OtherVault | NodeError::Token(_) => Status::unauthenticated(message),
            NodeError::Csr(_) => Status::invalid_argument(message),
            NodeError::NotFound(_) | NodeError::TokenNotFound(_) | NodeError::NoSuchLabel(_) => {
                Status::not_found(message)
            }
            NodeError::Contended(_) => Status::aborted(message),
            NodeError::Removed(_) => Status::permission_denied(message),
            NodeError::Vault(e) => e.into(),
            NodeError::Store(e) => Status::unavailable(e.to_string()),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Spec(_) => Status::invalid_argument(message),
            ServiceError::Object(e) => e.into(),
            ServiceError::NameTaken(_) => Status::already_exists(message),
            ServiceError::NotFound(_) | ServiceError::NoSuchReference(..) | ServiceError::NoSuchConstraint(..) => {
                Status::not_found(message)
            }
            ServiceError::Corrupt(_) => Status::data_loss(message),
            ServiceError::Store(e) => Status::unavailable(e.to_string()),
        }
    }
}

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<pb::AssignmentPart, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeService {
    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        self.join_gate.admit(peer)?;
        let pb::JoinRequest { token, csr_pem, hostname, os, arch } = request.into_inner();
        let nodes = self.vault.nodes()?;
        let claims = Claimed { hostname: &hostname, os: &os, arch: &arch };
        let (node, cert_pem) = match nodes.join(&*self.vault.ca()?, &token, &csr_pem, &claims).await {
            Ok(joined) => joined,
            Err(e) => {
                self.join_gate.refused(peer);
                let from = peer.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
                let hostname = crate::audit::entry::truncated(&hostname, 64);
                tracing::warn!(error = %e, ?hostname, peer = %from, "join refused");
                let entry = AuditEntry::denied(format!("joining:{hostname}"), format!("join from {from}: {e}"));
                self.vault.audit().record(AuditEntry { token: e.token_id().map(str::to_string), ..entry }).await;
                return Err(e.into());
            }
        };
        tracing::info!(node = %node.id, name = %node.name, token = ?node.join_token_id, "node joined");
        let entry = AuditEntry::now("node_join").actor(format!("node:{}", node.id));
        self.vault
            .audit()
            .record(AuditEntry { node: Some(node.id.clone()), token: node.join_token_id.clone(), ..entry })
            .await;
        Ok(Response::new(pb::JoinResponse { node_id: node.id, cert_pem, ca_pem: self.vault.ca_cert_pem().to_string() }))
    }

    type AssignmentsStream = AssignmentStream;

    async fn assignments(
        &self,
        request: Request<pb::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let node_id = self.live_node(&request).await?;
        let Some(slot) = self.streams.take(&node_id) else {
            tracing::warn!(node = %node_id, "assignment stream refused: the node holds too many");
            let limit = crate::snapshots::STREAMS_PER_NODE;
            return Err(Status::resource_exhausted(format!("this node already holds {limit} assignment streams")));
        };
        if request.get_ref().open_audit_off {
            // Not a refusal: the node's operator chose it. Recorded on every stream, so the log
            // says for how long a node's reads went unrecorded.
            tracing::warn!(node = %node_id, "agent records no opens or reads (--no-open-audit)");
            let entry = AuditEntry::now("open_audit_off").actor(format!("node:{node_id}"));
            let reason = "the node's agent records no opens or reads of its tasks' files (hush-agent --no-open-audit); refusals are still recorded";
            let entry = AuditEntry { node: Some(node_id.clone()), reason: Some(reason.to_string()), ..entry };
            self.vault.audit().record(entry).await;
        }
        let vault = self.vault.clone();
        let (tx, rx) = mpsc::channel(4);
        // Subscribe before the first snapshot so no change between the two is missed.
        let changes = vault.store().subscribe();
        vault.nodes()?.set_connected(&node_id, true).await?;
        tracing::info!(node = %node_id, "assignment stream open");
        tokio::spawn(async move {
            let _slot = slot;
            stream_assignments(&vault, &node_id, changes, &tx).await;
            if let Ok(nodes) = vault.nodes() {
                let _ = nodes.set_connected(&node_id, false).await;
            }
            tracing::info!(node = %node_id, "assignment stream closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn start_task(
        &self,
        request: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        let node_id = self.live_node(&request).await?;
        let request = request.into_inner();
        let container = (!request.container_id.is_empty()).then(|| crate::tasks::Container {
            id: request.container_id.clone(),
            name: request.container_name.clone(),
            image: request.image.clone(),
        });
        // Placed, recorded and audited on a task of its own: if this call is dropped midway (its
        // agent went away), the task is still recorded in full and then ended again, rather than
        // left behind with no agent knowing its ID.
        let (answer, answered) = tokio::sync::oneshot::channel();
        let this = NodeService::new(self.vault.clone());
        tokio::spawn(async move {
            let placed = this.place_task(&node_id, &request.service, &request.name, container.clone()).await;
            let (task, service) = match placed {
                Ok(placed) => placed,
                Err(status) => {
                    let _ = answer.send(Err(status));
                    return;
                }
            };
            tracing::info!(node = %node_id, service = %service.name, task = %task.id, "task started");
            let entry = AuditEntry::now("task_start").actor(format!("node:{node_id}"));
            let entry = AuditEntry {
                node: Some(node_id.clone()),
                service: Some(service.name.clone()),
                task: Some(task.id.clone()),
                container: container.as_ref().map(|c| c.id.clone()),
                container_name: container.as_ref().map(|c| c.name.clone()),
                image: container.map(|c| c.image),
                ..entry
            };
            this.vault.audit().record(entry).await;
            let response = pb::StartTaskResponse { task_id: task.id.clone(), name: task.name };
            if answer.send(Ok(response)).is_err() {
                abandon(&this.vault, &node_id, &service.name, &task.id).await;
            }
        });
        let response = answered.await.map_err(|_| Status::internal("the task could not be recorded"))??;
        Ok(Response::new(response))
    }

    async fn end_task(&self, request: Request<pb::EndTaskRequest>) -> Result<Response<pb::EndTaskResponse>, Status> {
        let node_id = self.live_node(&request).await?;
        let task_id = request.into_inner().task_id;
        let ended = self
            .vault
            .tasks()
            .end_where(&node_id, |t| t.id == task_id)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(node = %node_id, task = %task_id, "task ended");
        let entry = AuditEntry::now("task_end").actor(format!("node:{node_id}"));
        let record = ended.into_iter().next();
        let container = record.as_ref().and_then(|t| t.container.clone());
        let entry = AuditEntry {
            node: Some(node_id.clone()),
            task: Some(task_id.clone()),
            service: record.map(|t| t.service_name),
            container: container.as_ref().map(|c| c.id.clone()),
            container_name: container.as_ref().map(|c| c.name.clone()),
            image: container.map(|c| c.image),
            ..entry
        };
        self.vault.audit().record(entry).await;
        Ok(Response::new(pb::EndTaskResponse {}))
    }

    async fn report_access(&self, request: Request<pb::AccessReport>) -> Result<Response<pb::AccessAck>, Status> {
        let node_id = self.live_node(&request).await?;
        let events = request.into_inner().events;
        self.reports.admit(&node_id, events.len())?;
        let services = self.vault.services().ok();
        let entries = crate::reports::entries_for(&self.vault.tasks(), services.as_ref(), &node_id, events).await;
        self.vault.audit().record_all(entries).await;
        Ok(Response::new(pb::AccessAck {}))
    }

    async fn sync_tasks(
        &self,
        request: Request<pb::SyncTasksRequest>,
    ) -> Result<Response<pb::SyncTasksResponse>, Status> {
        let node_id = self.live_node(&request).await?;
        let running = request.into_inner().running;
        let ended = self
            .vault
            .tasks()
            .end_where(&node_id, |t| !running.contains(&t.id))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .len();
        if ended > 0 {
            tracing::info!(node = %node_id, ended, "forgot tasks the agent no longer runs");
        }
        Ok(Response::new(pb::SyncTasksResponse {}))
    }
}

/// How often a stream checks that its replica still follows the store.
const HEALTH_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Sends the node's assignment, then a new one after every store change that alters it,
/// until the agent goes away or the node is removed (then the stream ends with an error).
/// Each snapshot goes out in bounded parts (see `AssignmentPart` in the proto and snapshots.rs):
/// the values the agent does not hold yet, one per message, then each task, then the end marker;
/// a large one as several complete snapshots, cut short when the assignment changes meanwhile.
async fn stream_assignments(
    vault: &Vault,
    node_id: &str,
    mut changes: broadcast::Receiver<crate::store::Change>,
    tx: &mpsc::Sender<Result<pb::AssignmentPart, Status>>,
) {
    let mut stopping = vault.stopping();
    // What was last sent, without its values: nothing plaintext is kept between changes.
    let mut last_sent: Option<Plan> = None;
    // The values the agent holds from this stream: those the last complete snapshot named.
    let mut held = HashSet::new();
    let mut revision = 0;
    let mut health_check = tokio::time::interval(HEALTH_CHECK);
    loop {
        let next = async {
            vault.nodes()?.get(node_id).await?;
            let objects = vault.objects()?;
            let plan = plan_for(&objects, node_id).await?;
            if let Some(sent) = last_sent.as_ref().filter(|sent| sent.same_assignment(&plan)) {
                return Ok::<_, Status>((plan, Some((sent.clone(), held.clone(), false))));
            }
            // Recorded before the values leave: every value sent is in the log.
            vault.audit().record_all(vault.delivered().new_entries(node_id, &plan)).await;
            let mut link = crate::snapshots::Link { tx, changes: &mut changes, changed: false };
            let sent = send_plan(&objects, &plan, last_sent.as_ref(), &held, revision, &mut link).await?;
            Ok((plan, sent.map(|sent| (sent.plan, sent.held, sent.interrupted))))
        };
        match next.await {
            Ok((_, None)) => return,
            Ok((plan, Some((sent, now_held, interrupted)))) => {
                drop(plan);
                last_sent = Some(sent);
                held = now_held;
                if interrupted {
                    // The assignment changed while it was sent: send the new one at once.
                    continue;
                }
            }
            Err(status) => {
                tracing::warn!(node = %node_id, error = %status.message(), "assignment stream ended");
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
        let plan = last_sent.as_ref().expect("set above");
        // Wait for a relevant change, or for the agent to leave.
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(change) if change.ops.iter().any(|op| plan.affected_by(op)) => {
                        revision = change.revision;
                        break;
                    }
                    Ok(_) => continue,
                    // Missed some: recompute from scratch.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
                _ = health_check.tick() => {
                    // Lost the store: end the stream so the agent moves to a replica that has it.
                    if let Err(why) = vault.store().health() {
                        tracing::warn!(node = %node_id, reason = %why, "ending an assignment stream");
                        let _ = tx.send(Err(Status::unavailable(format!("this vault replica {why}")))).await;
                        return;
                    }
                }
                changed = stopping.changed() => {
                    if changed.is_err() || *stopping.borrow() {
                        let _ = tx.send(Err(Status::unavailable("the vault is shutting down"))).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Ends a task whose `StartTask` call went away before its answer: no agent knows its ID.
async fn abandon(vault: &Vault, node_id: &str, service: &str, task_id: &str) {
    if let Err(e) = vault.tasks().end_where(node_id, |t| t.id == task_id).await {
        tracing::warn!(node = %node_id, task = %task_id, error = %e, "cannot end an abandoned task");
        return;
    }
    tracing::info!(node = %node_id, task = %task_id, "task ended: its agent left before the start was answered");
    let entry = AuditEntry::now("task_end").actor(format!("node:{node_id}"));
    let reason = Some("the agent left before the task started".to_string());
    let (node, task, service) = (Some(node_id.to_string()), Some(task_id.to_string()), Some(service.to_string()));
    vault.audit().record(AuditEntry { node, task, service, reason, ..entry }).await;
}
