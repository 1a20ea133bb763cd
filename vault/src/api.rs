//! The admin gRPC service: converts proto ⇄ domain types and errors, nothing more.

use crate::identity::require_admin;
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
}

impl AdminService {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
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
            VaultError::NotFound { .. } => Status::not_found(message),
            VaultError::Ambiguous { .. } => Status::failed_precondition(message),
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
            VaultStateError::Keyring(crate::keyring::KeyringError::NotAutolocked) => Status::failed_precondition(message),
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
        let peer = require_admin(&request)?;
        let objects = self.objects()?;
        let pb::CreateRequest { kind, name, labels, data } = request.into_inner();
        let kind = kind_of(kind)?;
        let record = objects.create(kind, &name, labels.into_iter().collect(), SecretBytes::new(data)).await?;
        tracing::info!(actor = %peer.actor(), %kind, name = %record.name, id = %record.id, "created");
        Ok(Response::new(pb::CreateResponse { id: record.id }))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        require_admin(&request)?;
        let objects = self.objects()?;
        let request = request.into_inner();
        let kind = kind_of(request.kind)?;
        let filters = Filters::parse(request.filters.iter().map(|f| (f.key.as_str(), f.value.as_str())))?;
        let records = objects.list(kind, &filters).await?;
        Ok(Response::new(pb::ListResponse { objects: records.iter().map(to_meta).collect() }))
    }

    async fn inspect(&self, request: Request<pb::InspectRequest>) -> Result<Response<pb::InspectResponse>, Status> {
        require_admin(&request)?;
        let objects = self.objects()?;
        let request = request.into_inner();
        let kind = kind_of(request.kind)?;
        let record = objects.find(kind, &request.reference).await?.record;
        // Configs are not secret: inspect shows their data. Secret values never leave this way.
        let data = match kind {
            Kind::Config => objects.open_version(kind, &record, record.current_version()).await?.expose_secret().to_vec(),
            Kind::Secret => Vec::new(),
        };
        Ok(Response::new(pb::InspectResponse { meta: Some(to_meta(&record)), data }))
    }

    async fn remove(&self, request: Request<pb::RemoveRequest>) -> Result<Response<pb::RemoveResponse>, Status> {
        let peer = require_admin(&request)?;
        let objects = self.objects()?;
        let request = request.into_inner();
        let kind = kind_of(request.kind)?;
        let record = objects.remove(kind, &request.reference).await?;
        tracing::info!(actor = %peer.actor(), %kind, name = %record.name, id = %record.id, "removed");
        Ok(Response::new(pb::RemoveResponse { id: record.id }))
    }

    async fn rotate(&self, request: Request<pb::RotateRequest>) -> Result<Response<pb::RotateResponse>, Status> {
        let peer = require_admin(&request)?;
        let objects = self.objects()?;
        let pb::RotateRequest { kind, reference, data } = request.into_inner();
        let kind = kind_of(kind)?;
        let record = objects.rotate(kind, &reference, SecretBytes::new(data)).await?;
        let version = record.current_version();
        tracing::info!(actor = %peer.actor(), %kind, name = %record.name, version, "rotated");
        Ok(Response::new(pb::RotateResponse { id: record.id, version }))
    }

    async fn unlock(&self, request: Request<pb::UnlockRequest>) -> Result<Response<pb::UnlockResponse>, Status> {
        let peer = require_admin(&request)?;
        let key = request.into_inner().unlock_key;
        match self.vault.unlock(key).await {
            Ok(()) => {
                tracing::info!(actor = %peer.actor(), "vault unlocked");
                Ok(Response::new(pb::UnlockResponse {}))
            }
            Err(e) => {
                tracing::warn!(actor = %peer.actor(), error = %e, "unlock refused");
                Err(e.into())
            }
        }
    }

    async fn rotate_key(&self, request: Request<pb::RotateKeyRequest>) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let peer = require_admin(&request)?;
        let unlock = self.vault.rotate_key().await?;
        tracing::info!(actor = %peer.actor(), "key-encryption key rotated");
        let unlock_key = unlock.map(|k| k.expose_secret().to_string()).unwrap_or_default();
        Ok(Response::new(pb::RotateKeyResponse { unlock_key }))
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(pb::StatusResponse {
            locked: self.vault.is_locked(),
            autolock: self.vault.is_autolock(),
            ca_fingerprint: self.vault.ca_fingerprint().to_string(),
        }))
    }
}
