//! The admin gRPC service: converts proto ⇄ domain types and errors, nothing more.

use crate::audit::AuditEntry;
use crate::identity::{Peer, actor_of, require_admin};
use crate::model::{Kind, ObjectRecord};
use crate::objects::{Filters, VaultError};
use crate::secret::SecretBytes;
use crate::vault::{Vault, VaultStateError};
use hush_proto::v1 as pb;
use hush_proto::v1::admin_server::Admin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminService {
    vault: Arc<Vault>,
    /// Open `hush audit --follow` streams, by admin (follow.rs).
    follows: Arc<crate::follow::Streams>,
    /// Open `hush audit` queries without `--follow`, by admin (follow.rs).
    queries: Arc<crate::follow::Streams>,
}

impl AdminService {
    pub fn new(vault: Arc<Vault>) -> Self {
        use crate::follow::{FOLLOWS, QUERIES, Streams};
        Self { vault, follows: Streams::new(FOLLOWS), queries: Streams::new(QUERIES) }
    }

    /// The admin behind a request; a refusal is audited as `denied`.
    async fn admin<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        match require_admin(request) {
            Ok(peer) => Ok(peer),
            Err(status) => {
                self.record(AuditEntry::denied(actor_of(request), status.message())).await;
                Err(status)
            }
        }
    }

    async fn record(&self, entry: AuditEntry) {
        self.vault.audit().record(entry).await;
    }

    /// Tasks a label or constraint change ended because their node no longer satisfies their
    /// service's constraints.
    async fn record_placement_ends(&self, peer: &Peer, ended: Vec<crate::tasks::TaskRecord>) {
        let entries = ended
            .into_iter()
            .map(|task| AuditEntry {
                node: Some(task.node_id),
                service: Some(task.service_name),
                task: Some(task.id),
                reason: Some("its node no longer satisfies the service's constraints".into()),
                ..AuditEntry::now("task_end").actor(peer.actor())
            })
            .collect::<Vec<_>>();
        if !entries.is_empty() {
            self.vault.audit().record_all(entries).await;
        }
    }

    fn objects(&self) -> Result<Arc<crate::objects::Objects>, Status> {
        self.vault.objects().map_err(Status::from)
    }
}

impl From<VaultError> for Status {
    fn from(e: VaultError) -> Self {
        let message = e.to_string();
        match e {
            VaultError::Invalid(_) | VaultError::Filter(_) => Status::invalid_argument(message),
            VaultError::NameTaken { .. } => Status::already_exists(message),
            VaultError::NotFound { .. } | VaultError::NotAName { .. } => Status::not_found(message),
            VaultError::Ambiguous { .. } | VaultError::InUse { .. } => Status::failed_precondition(message),
            VaultError::Tampered { .. } | VaultError::Corrupt { .. } => Status::data_loss(message),
            VaultError::Contended => Status::aborted(message),
            VaultError::Store(_) => Status::unavailable(message),
        }
    }
}

impl From<VaultStateError> for Status {
    fn from(e: VaultStateError) -> Self {
        let message = e.to_string();
        match e {
            VaultStateError::Locked | VaultStateError::AlreadyUnlocked => Status::failed_precondition(message),
            VaultStateError::Keyring(crate::keyring::KeyringError::WrongUnlockKey) => Status::invalid_argument(message),
            VaultStateError::Keyring(crate::keyring::KeyringError::NotAutolocked) => {
                Status::failed_precondition(message)
            }
            VaultStateError::Keyring(_) | VaultStateError::Open(_) => Status::internal(message),
        }
    }
}

fn kind_of(kind: i32) -> Result<Kind, Status> {
    match pb::Kind::try_from(kind) {
        Ok(pb::Kind::Secret) => Ok(Kind::Secret),
        Ok(pb::Kind::Config) => Ok(Kind::Config),
        _ => Err(Status::invalid_argument("kind must be secret or config")),
    }
}

fn rfc3339(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn to_reference(b: &crate::services::BoundReference) -> pb::FileReference {
    pb::FileReference {
        source: b.reference.source.clone(),
        object_id: b.object_id.clone(),
        target: b.reference.target.clone(),
        uid: b.reference.uid,
        gid: b.reference.gid,
        mode: b.reference.mode,
    }
}

fn to_service(s: &crate::services::ServiceRecord) -> pb::ServiceSpec {
    pb::ServiceSpec {
        id: s.id.clone(),
        name: s.name.clone(),
        secrets: s.secrets.iter().map(to_reference).collect(),
        configs: s.configs.iter().map(to_reference).collect(),
        created_at: rfc3339(&s.created_at),
        updated_at: rfc3339(&s.updated_at),
        labels: s.labels.clone().into_iter().collect(),
        constraints: s.constraints.iter().map(ToString::to_string).collect(),
    }
}

fn to_node_info(n: crate::nodes::NodeRecord, ready: bool, tasks: u32) -> pb::NodeInfo {
    pb::NodeInfo {
        ready,
        tasks,
        // A connected node is seen now; the stored time is when its stream last changed.
        last_seen: rfc3339(&if ready { chrono::Utc::now() } else { n.last_seen }),
        joined_at: rfc3339(&n.joined_at),
        id: n.id,
        name: n.name,
        labels: n.labels.into_iter().collect(),
        os: n.os,
        arch: n.arch,
        join_token_id: n.join_token_id.unwrap_or_default(),
    }
}

fn to_meta(record: &ObjectRecord) -> pb::ObjectMeta {
    pb::ObjectMeta {
        id: record.id.clone(),
        name: record.name.clone(),
        labels: record.labels.clone().into_iter().collect(),
        version: record.current_version(),
        created_at: record.created_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        updated_at: record.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        versions: record
            .versions
            .iter()
            .map(|v| pb::VersionMeta {
                version: v.version,
                created_at: v.created_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                size: v.size,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create(&self, request: Request<pb::CreateRequest>) -> Result<Response<pb::CreateResponse>, Status> {
        let peer = self.admin(&request).await?;
        let objects = self.objects()?;
        let pb::CreateRequest { kind, name, labels, data } = request.into_inner();
        let kind = kind_of(kind)?;
        let record = objects.create(kind, &name, labels.into_iter().collect(), SecretBytes::new(data)).await?;
        tracing::info!(actor = %peer.actor(), %kind, name = %record.name, id = %record.id, "created");
        self.record(AuditEntry {
            version: Some(1),
            ..AuditEntry::now("create").actor(peer.actor()).object(kind, &record.name)
        })
        .await;
        Ok(Response::new(pb::CreateResponse { id: record.id }))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        self.admin(&request).await?;
        let objects = self.objects()?;
        let request = request.into_inner();
        let kind = kind_of(request.kind)?;
        let filters = Filters::parse(request.filters.iter().map(|f| (f.key.as_str(), f.value.as_str())))?;
        let records = objects.list(kind, &filters).await?;
        Ok(Response::new(pb::ListResponse { objects: records.iter().map(to_meta).collect() }))
    }

    async fn inspect(&self, request: Request<pb::InspectRequest>) -> Result<Response<pb::InspectResponse>, Status> {
        let peer = self.admin(&request).await?;
        let objects = self.objects()?;
        let request = request.into_inner();
        let kind = kind_of(request.kind)?;
        let record = objects.find(kind, &request.reference).await?.record;
        // Configs are not secret: inspect shows their data. Secret values never leave this way.
        let data = match kind {
            Kind::Config => {
                objects.open_version(kind, &record, record.current_version()).await?.expose_secret().to_vec()
            }
            Kind::Secret => Vec::new(),
        };
        let entry = AuditEntry::now("inspect").actor(peer.actor()).object(kind, &record.name);
        self.record(AuditEntry { version: Some(record.current_version()), ..entry }).await;
        Ok(Response::new(pb::InspectResponse { meta: Some(to_meta(&record)), data }))
    }

    async fn remove(&self, request: Request<pb::RemoveRequest>) -> Result<Response<pb::RemoveResponse>, Status> {
        let peer = self.admin(&request).await?;
        let objects = self.objects()?;
        let request = request.into_inner();
        let kind = kind_of(request.kind)?;
        let services = self.vault.services()?;
        let record = objects
            .remove(kind, &request.reference, |record| {
                let services = &services;
                async move { services.users_of(kind, &record.id).await }
            })
            .await?;
        tracing::info!(actor = %peer.actor(), %kind, name = %record.name, id = %record.id, "removed");
        self.record(AuditEntry::now("rm").actor(peer.actor()).object(kind, &record.name)).await;
        Ok(Response::new(pb::RemoveResponse { id: record.id }))
    }

    async fn rotate(&self, request: Request<pb::RotateRequest>) -> Result<Response<pb::RotateResponse>, Status> {
        let peer = self.admin(&request).await?;
        let objects = self.objects()?;
        let pb::RotateRequest { kind, reference, data, only_if_changed } = request.into_inner();
        let kind = kind_of(kind)?;
        let (record, changed) =
            objects.rotate_checked(kind, &reference, SecretBytes::new(data), only_if_changed).await?;
        let version = record.current_version();
        if !changed {
            return Ok(Response::new(pb::RotateResponse { id: record.id, version, changed }));
        }
        tracing::info!(actor = %peer.actor(), %kind, name = %record.name, version, "rotated");
        self.record(AuditEntry {
            version: Some(version),
            ..AuditEntry::now("rotate").actor(peer.actor()).object(kind, &record.name)
        })
        .await;
        Ok(Response::new(pb::RotateResponse { id: record.id, version, changed }))
    }

    async fn unlock(&self, request: Request<pb::UnlockRequest>) -> Result<Response<pb::UnlockResponse>, Status> {
        let peer = self.admin(&request).await?;
        let key = request.into_inner().unlock_key;
        match self.vault.unlock(key).await {
            Ok(()) => {
                tracing::info!(actor = %peer.actor(), "vault unlocked");
                self.record(AuditEntry::now("unlock").actor(peer.actor())).await;
                Ok(Response::new(pb::UnlockResponse {}))
            }
            Err(e) => {
                tracing::warn!(actor = %peer.actor(), error = %e, "unlock refused");
                self.record(AuditEntry::denied(peer.actor(), format!("unlock: {e}"))).await;
                Err(e.into())
            }
        }
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let peer = self.admin(&request).await?;
        let unlock = self.vault.rotate_key().await?;
        tracing::info!(actor = %peer.actor(), "key-encryption key rotated");
        self.record(AuditEntry::now("rotate_key").actor(peer.actor())).await;
        let unlock_key = unlock.map(|k| k.expose_secret().to_string()).unwrap_or_default();
        Ok(Response::new(pb::RotateKeyResponse { unlock_key }))
    }

    async fn service_create(
        &self,
        request: Request<pb::ServiceCreateRequest>,
    ) -> Result<Response<pb::ServiceCreateResponse>, Status> {
        let peer = self.admin(&request).await?;
        let r = request.into_inner();
        let labels = r.labels.into_iter().collect();
        let service = self.vault.services()?.create(&r.name, &r.secrets, &r.configs, labels, &r.constraints).await?;
        tracing::info!(actor = %peer.actor(), name = %service.name, id = %service.id, "service created");
        self.record(AuditEntry {
            service: Some(service.name.clone()),
            ..AuditEntry::now("service_create").actor(peer.actor())
        })
        .await;
        Ok(Response::new(pb::ServiceCreateResponse { id: service.id }))
    }

    async fn service_list(
        &self,
        request: Request<pb::ServiceListRequest>,
    ) -> Result<Response<pb::ServiceListResponse>, Status> {
        self.admin(&request).await?;
        let services = self.vault.services()?.list().await?;
        Ok(Response::new(pb::ServiceListResponse { services: services.iter().map(to_service).collect() }))
    }

    async fn service_inspect(
        &self,
        request: Request<pb::ServiceInspectRequest>,
    ) -> Result<Response<pb::ServiceInspectResponse>, Status> {
        self.admin(&request).await?;
        let (service, _) = self.vault.services()?.find(&request.into_inner().reference).await?;
        Ok(Response::new(pb::ServiceInspectResponse { service: Some(to_service(&service)) }))
    }

    async fn service_remove(
        &self,
        request: Request<pb::ServiceRemoveRequest>,
    ) -> Result<Response<pb::ServiceRemoveResponse>, Status> {
        let peer = self.admin(&request).await?;
        let service = self.vault.services()?.remove(&request.into_inner().reference).await?;
        tracing::info!(actor = %peer.actor(), name = %service.name, "service removed");
        self.record(AuditEntry {
            service: Some(service.name.clone()),
            ..AuditEntry::now("service_rm").actor(peer.actor())
        })
        .await;
        Ok(Response::new(pb::ServiceRemoveResponse { id: service.id }))
    }

    async fn service_update(
        &self,
        request: Request<pb::ServiceUpdateRequest>,
    ) -> Result<Response<pb::ServiceUpdateResponse>, Status> {
        let peer = self.admin(&request).await?;
        let r = request.into_inner();
        let services = self.vault.services()?;
        let (service, ended) = if r.replace {
            services.replace(&r.reference, &r.secrets, &r.configs, &r.constraints).await?
        } else {
            let changes = crate::services::Changes {
                secret_add: &r.secret_add,
                secret_rm: &r.secret_rm,
                config_add: &r.config_add,
                config_rm: &r.config_rm,
                constraint_add: &r.constraint_add,
                constraint_rm: &r.constraint_rm,
            };
            services.update(&r.reference, changes).await?
        };
        tracing::info!(actor = %peer.actor(), name = %service.name, "service updated");
        self.record(AuditEntry {
            service: Some(service.name.clone()),
            ..AuditEntry::now("service_update").actor(peer.actor())
        })
        .await;
        self.record_placement_ends(&peer, ended).await;
        Ok(Response::new(pb::ServiceUpdateResponse { id: service.id }))
    }

    async fn join_token(
        &self,
        request: Request<pb::JoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenResponse>, Status> {
        let peer = self.admin(&request).await?;
        let r = request.into_inner();
        let ttl = match r.ttl_seconds {
            0 => None,
            s => Some(
                i64::try_from(s)
                    .ok()
                    .and_then(chrono::Duration::try_seconds)
                    .ok_or_else(|| Status::invalid_argument(format!("invalid ttl: {s} seconds is too long")))?,
            ),
        };
        let grant = crate::join_token::Grant {
            ttl,
            max_uses: (r.uses > 0).then_some(r.uses),
            labels: r.labels.into_iter().collect(),
        };
        let minted = self.vault.nodes()?.mint_token(&grant, r.rotate, &peer.actor()).await?;
        let record = &minted.record;
        tracing::info!(actor = %peer.actor(), token = %record.id, revoked = minted.revoked, "join token minted");
        let op = if r.rotate { "join_token_rotate" } else { "join_token" };
        self.record(AuditEntry {
            token: Some(record.id.clone()),
            count: r.rotate.then_some(minted.revoked as u64),
            ..AuditEntry::now(op).actor(peer.actor())
        })
        .await;
        Ok(Response::new(pb::JoinTokenResponse {
            id: record.id.clone(),
            expires_at: rfc3339(&record.expires_at),
            uses: record.max_uses.unwrap_or(0),
            revoked: minted.revoked as u32,
            token: minted.token,
        }))
    }

    async fn join_token_list(
        &self,
        request: Request<pb::JoinTokenListRequest>,
    ) -> Result<Response<pb::JoinTokenListResponse>, Status> {
        self.admin(&request).await?;
        let tokens = self.vault.nodes()?.tokens().await?;
        let tokens = tokens
            .into_iter()
            .map(|t| pb::JoinTokenInfo {
                id: t.id,
                created_at: rfc3339(&t.created_at),
                created_by: t.created_by,
                expires_at: rfc3339(&t.expires_at),
                max_uses: t.max_uses.unwrap_or(0),
                uses: t.uses,
                labels: t.labels.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(pb::JoinTokenListResponse { tokens }))
    }

    async fn join_token_remove(
        &self,
        request: Request<pb::JoinTokenRemoveRequest>,
    ) -> Result<Response<pb::JoinTokenRemoveResponse>, Status> {
        let peer = self.admin(&request).await?;
        let reference = request.into_inner().reference;
        let record = self.vault.nodes()?.remove_token(&reference).await?;
        tracing::info!(actor = %peer.actor(), token = %record.id, "join token revoked");
        self.record(AuditEntry {
            token: Some(record.id.clone()),
            ..AuditEntry::now("join_token_rm").actor(peer.actor())
        })
        .await;
        Ok(Response::new(pb::JoinTokenRemoveResponse { id: record.id }))
    }

    async fn node_inspect(
        &self,
        request: Request<pb::NodeInspectRequest>,
    ) -> Result<Response<pb::NodeInspectResponse>, Status> {
        self.admin(&request).await?;
        let nodes = self.vault.nodes()?;
        let node = nodes.find(&request.into_inner().reference).await?;
        let tasks = self.vault.tasks().of_node(&node.id).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let ready = nodes.is_connected(&node.id);
        Ok(Response::new(pb::NodeInspectResponse { node: Some(to_node_info(node, ready, tasks.len() as u32)) }))
    }

    async fn node_update(
        &self,
        request: Request<pb::NodeUpdateRequest>,
    ) -> Result<Response<pb::NodeUpdateResponse>, Status> {
        let peer = self.admin(&request).await?;
        let r = request.into_inner();
        let add = r.label_add.into_iter().collect();
        let (node, ended) = self.vault.nodes()?.update_labels(&r.reference, &add, &r.label_rm).await?;
        tracing::info!(actor = %peer.actor(), node = %node.id, "node labels updated");
        self.record(AuditEntry { node: Some(node.id.clone()), ..AuditEntry::now("node_update").actor(peer.actor()) })
            .await;
        self.record_placement_ends(&peer, ended).await;
        Ok(Response::new(pb::NodeUpdateResponse { id: node.id }))
    }

    async fn node_list(&self, request: Request<pb::NodeListRequest>) -> Result<Response<pb::NodeListResponse>, Status> {
        self.admin(&request).await?;
        let nodes = self.vault.nodes()?;
        let tasks = self.vault.tasks().list().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let infos = nodes
            .list()
            .await?
            .into_iter()
            .map(|n| {
                let ready = nodes.is_connected(&n.id);
                let count = tasks.iter().filter(|t| t.node_id == n.id).count() as u32;
                to_node_info(n, ready, count)
            })
            .collect();
        Ok(Response::new(pb::NodeListResponse { nodes: infos }))
    }

    async fn node_remove(
        &self,
        request: Request<pb::NodeRemoveRequest>,
    ) -> Result<Response<pb::NodeRemoveResponse>, Status> {
        let peer = self.admin(&request).await?;
        let node = self.vault.nodes()?.remove(&request.into_inner().reference).await?;
        self.vault.delivered().forget(&node.id);
        tracing::info!(actor = %peer.actor(), node = %node.id, name = %node.name, "node removed: certificate revoked");
        self.record(AuditEntry { node: Some(node.id.clone()), ..AuditEntry::now("node_rm").actor(peer.actor()) }).await;
        Ok(Response::new(pb::NodeRemoveResponse { id: node.id }))
    }

    type AuditQueryStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AuditLine, Status>> + Send>>;

    async fn audit_query(
        &self,
        request: Request<pb::AuditQueryRequest>,
    ) -> Result<Response<Self::AuditQueryStream>, Status> {
        let admin = self.admin(&request).await?;
        // Held by the answer's stream (and its reader): given back once the caller has it all or goes.
        let slot = if request.get_ref().follow { &self.follows } else { &self.queries };
        let slot = Arc::new(slot.acquire(&admin.actor())?);
        let r = request.into_inner();
        let time = |t: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, Status> {
            if t.is_empty() {
                return Ok(None);
            }
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| Some(t.with_timezone(&chrono::Utc)))
                .map_err(|_| Status::invalid_argument(format!("invalid time {t:?}: expected RFC 3339")))
        };
        let some = |s: String| (!s.is_empty()).then_some(s);
        // Nodes are recorded by ID; accept a name or ID prefix too.
        let node = match some(r.node) {
            Some(node) => Some(self.vault.nodes()?.find(&node).await.map(|n| n.id).unwrap_or(node)),
            None => None,
        };
        let query = crate::audit::query::Query {
            secret: some(r.secret),
            config: some(r.config),
            service: some(r.service),
            node,
            task: some(r.task),
            container: some(r.container),
            since: time(&r.since)?,
            until: time(&r.until)?,
        };
        let audit = self.vault.audit();
        if audit.is_shared() {
            // Replicas on etcd: every replica's chain, merged (audit/shared.rs).
            let lines = crate::audit::shared::query(audit.store(), query, r.follow, self.vault.stopping());
            let stream =
                tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(lines), move |line| {
                    let _slot = &slot;
                    line.map(|json| pb::AuditLine { json }).map_err(|end| match end {
                        crate::audit::shared::QueryEnd::Store(e) => Status::unavailable(e),
                        crate::audit::shared::QueryEnd::Lagged(n) => {
                            Status::data_loss(format!("follower fell behind by {n} changes; query again"))
                        }
                    })
                });
            return Ok(Response::new(Box::pin(stream)));
        }
        // Subscribe before reading the files, so nothing written in between is missed.
        let mut live = r.follow.then(|| audit.subscribe());
        // Read as sent, a page of lines at a time: a query's memory does not grow with the log.
        let mut stored = audit.stream_lines(256);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut stopping = self.vault.stopping();
        let reader_slot = slot.clone();
        tokio::spawn(async move {
            let _slot = reader_slot;
            let mut last_seq = 0;
            // Each line parsed once: its sequence number, and whether the query wants it.
            let read = |line: &str| {
                serde_json::from_str::<AuditEntry>(line).map_or((0, false), |e| (e.seq, query.matches(&e)))
            };
            // A line without the query's needles is not parsed; if it is the last, for its seq.
            let needles = query.needles();
            let mut unparsed = None::<String>;
            while let Some(line) = stored.recv().await {
                let line = match line {
                    Ok(line) => line,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                if !needles.iter().all(|n| line.contains(n.as_str())) {
                    unparsed = Some(line);
                    continue;
                }
                unparsed = None;
                let (seq, wanted) = read(&line);
                last_seq = last_seq.max(seq);
                if wanted && tx.send(Ok(pb::AuditLine { json: line })).await.is_err() {
                    return;
                }
            }
            if let Some(line) = unparsed {
                last_seq = last_seq.max(read(&line).0);
            }
            let Some(live) = live.as_mut() else { return };
            loop {
                tokio::select! {
                    line = live.recv() => match line {
                        Ok(line) => {
                            let (seq, wanted) = read(&line);
                            if seq > last_seq && wanted && tx.send(Ok(pb::AuditLine { json: line })).await.is_err() {
                                return;
                            }
                            last_seq = last_seq.max(seq);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(Status::data_loss(format!("follower fell behind by {n} entries; query again")))).await;
                            return;
                        }
                        Err(_) => return,
                    },
                    _ = tx.closed() => return,
                    // Followers must not hold up a shutdown.
                    _ = stopping.changed() => return,
                }
            }
        });
        let lines = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), move |line| {
            let _slot = &slot;
            line
        });
        Ok(Response::new(Box::pin(lines)))
    }

    async fn audit_verify(
        &self,
        request: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyResponse>, Status> {
        self.admin(&request).await?;
        let response = match self.vault.audit().verify().await {
            Ok(v) => pb::AuditVerifyResponse {
                ok: true,
                entries: v.entries,
                files: v.files,
                problem: String::new(),
                chains: v.chains,
                links: v.links,
                unreadable: String::new(),
            },
            Err(crate::audit::VerifyError::Tampered(problem)) => {
                pb::AuditVerifyResponse { ok: false, problem, ..Default::default() }
            }
            Err(crate::audit::VerifyError::Unreadable(why)) => {
                pb::AuditVerifyResponse { ok: false, unreadable: why, ..Default::default() }
            }
        };
        Ok(Response::new(response))
    }

    async fn members(&self, request: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        self.admin(&request).await?;
        let cluster = self.vault.cluster().ok_or_else(|| Status::unavailable("this vault is not serving yet"))?;
        let listing = cluster.listing(self.vault.store().as_ref()).await.map_err(Status::unavailable)?;
        Ok(Response::new(members_to_pb(listing)))
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        self.admin(&request).await?;
        Ok(Response::new(pb::StatusResponse {
            locked: self.vault.is_locked(),
            autolock: self.vault.is_autolock(),
            ca_fingerprint: self.vault.ca_fingerprint().to_string(),
        }))
    }
}

fn members_to_pb(listing: crate::cluster::Listing) -> pb::MembersResponse {
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let members = listing
        .members
        .into_iter()
        .map(|m| pb::Member {
            id: m.record.id,
            address: m.record.address,
            ready: m.ready,
            leader: m.leader,
            last_heartbeat: time(m.record.heartbeat_at),
            started_at: time(m.record.started_at),
            version: m.record.version,
            answering: m.answering,
        })
        .collect();
    let endpoints = listing
        .endpoints
        .into_iter()
        .map(|(endpoint, status)| match status {
            Ok(s) => pb::EtcdEndpoint {
                endpoint,
                healthy: s.healthy,
                leader: s.leader,
                version: s.version,
                db_size: s.db_size,
                error: s.errors.join("; "),
            },
            Err(error) => pb::EtcdEndpoint { endpoint, error, ..Default::default() },
        })
        .collect();
    pb::MembersResponse { store: listing.store, members, endpoints }
}
