//! Deploying a loaded project to a vault, all or nothing: everything is checked against the
//! vault first (external objects exist, names are free or already the project's), then objects
//! are created, then services created or updated; if any step fails, what this deploy created is
//! removed and the services it updated get their previous references back. Rotations of changed
//! values come last, once nothing else can fail: a new version is live at once and is not undone.
//!
//! Re-deploying is idempotent: a value equal to the stored one is not rotated (the vault compares,
//! see `only_if_changed`), and a service whose references are unchanged is not touched. Services
//! and objects that left the file stay, as with `docker stack deploy` (use `hush compose rm`).

use super::resolve::{Loaded, ObjectSpec, ServiceSpec, Source};
use super::{ComposeError, PROJECT_LABEL};
use crate::client;
use crate::model::Kind;
use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use std::collections::BTreeMap;
use tonic::transport::Channel;

/// Why a deploy stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error("{0}")]
    Vault(String),
    /// The deploy failed and so did part of undoing it: say both.
    #[error("{error} (and undoing the deploy failed: {undo})")]
    Undo { error: Box<DeployError>, undo: String },
}

fn vault(status: tonic::Status) -> DeployError {
    DeployError::Vault(client::explain(&status))
}

pub fn pb_kind(kind: Kind) -> i32 {
    match kind {
        Kind::Secret => pb::Kind::Secret as i32,
        Kind::Config => pb::Kind::Config as i32,
    }
}

/// What the deploy will do, decided before anything changes.
#[derive(Debug, Default)]
struct Plan {
    create_objects: Vec<(Kind, String)>,
    rotate_objects: Vec<(Kind, String)>,
    create_services: Vec<String>,
    /// Compose key, and the service as it is now (for undoing).
    update_services: Vec<(String, pb::ServiceSpec)>,
}

/// Everything a project's resources are, in the vault now.
pub struct Inventory {
    pub secrets: Vec<pb::ObjectMeta>,
    pub configs: Vec<pb::ObjectMeta>,
    pub services: Vec<pb::ServiceSpec>,
}

impl Inventory {
    pub async fn read(client: &mut AdminClient<Channel>) -> Result<Self, tonic::Status> {
        let mut list = async |kind| {
            let request = pb::ListRequest { kind: pb_kind(kind), filters: Vec::new() };
            client.list(request).await.map(|r| r.into_inner().objects)
        };
        let secrets = list(Kind::Secret).await?;
        let configs = list(Kind::Config).await?;
        let services = client.service_list(pb::ServiceListRequest {}).await?.into_inner().services;
        Ok(Self { secrets, configs, services })
    }

    pub fn objects(&self, kind: Kind) -> &[pb::ObjectMeta] {
        match kind {
            Kind::Secret => &self.secrets,
            Kind::Config => &self.configs,
        }
    }

    /// Names of projects with their numbers of services, secrets and configs.
    pub fn projects(&self) -> BTreeMap<String, [usize; 3]> {
        let mut projects: BTreeMap<String, [usize; 3]> = BTreeMap::new();
        let services = self.services.iter().map(|s| (0, &s.labels));
        let secrets = self.secrets.iter().map(|o| (1, &o.labels));
        let configs = self.configs.iter().map(|o| (2, &o.labels));
        for (column, labels) in services.chain(secrets).chain(configs) {
            if let Some(project) = labels.get(PROJECT_LABEL) {
                projects.entry(project.clone()).or_default()[column] += 1;
            }
        }
        projects
    }
}

fn owner(labels: &std::collections::HashMap<String, String>) -> Option<&str> {
    labels.get(PROJECT_LABEL).map(String::as_str)
}

/// Checks the project against the vault's current state; changes nothing.
fn plan(loaded: &Loaded, now: &Inventory) -> Result<Plan, ComposeError> {
    let project = &loaded.project;
    let mut plan = Plan::default();
    for kind in [Kind::Secret, Kind::Config] {
        for (key, spec) in project.objects(kind) {
            let existing = now.objects(kind).iter().find(|o| o.name == spec.name);
            match (&spec.source, existing) {
                (Source::External, Some(_)) => {}
                (Source::External, None) => {
                    return Err(spec.origin.error(format!(
                        "external {kind} {:?} not found: create it first (hush {kind} create {} FILE)",
                        spec.name, spec.name
                    )));
                }
                (_, None) => plan.create_objects.push((kind, key.clone())),
                (_, Some(o)) if owner(&o.labels) == Some(project.name.as_str()) => {
                    plan.rotate_objects.push((kind, key.clone()))
                }
                (_, Some(_)) => {
                    return Err(spec.origin.error(format!(
                        "{kind} {:?} already exists and is not part of project {}: remove it, mark it external, or choose another name:",
                        spec.name, project.name
                    )));
                }
            }
        }
    }
    for (key, spec) in &project.services {
        match now.services.iter().find(|s| s.name == spec.name) {
            None => plan.create_services.push(key.clone()),
            Some(s) if owner(&s.labels) == Some(project.name.as_str()) => {
                if !same_references(spec, s) {
                    plan.update_services.push((key.clone(), s.clone()));
                }
            }
            Some(_) => {
                return Err(ComposeError::new(format!(
                    "services.{key}: service {} already exists and is not part of project {}",
                    spec.name, project.name
                )));
            }
        }
    }
    Ok(plan)
}

fn same_references(spec: &ServiceSpec, now: &pb::ServiceSpec) -> bool {
    let same = |kind: Kind, current: &[pb::FileReference]| {
        let wanted = spec.references(kind);
        wanted.len() == current.len()
            && wanted.iter().zip(current).all(|(w, c)| {
                let r = &w.reference;
                (&r.source, &r.target, r.uid, r.gid, r.mode) == (&c.source, &c.target, c.uid, c.gid, c.mode)
            })
    };
    same(Kind::Secret, &now.secrets) && same(Kind::Config, &now.configs) && spec.constraints == now.constraints
}

fn specs(list: &[super::resolve::ReferenceSpec]) -> Vec<String> {
    list.iter().map(|r| r.spec_string()).collect()
}

/// `source=NAME,...` of references as the vault holds them (to put a service back).
fn current_specs(list: &[pb::FileReference]) -> Vec<String> {
    list.iter()
        .map(|r| format!("source={},target={},uid={},gid={},mode=0{:o}", r.source, r.target, r.uid, r.gid, r.mode))
        .collect()
}

/// What changed, line by line (`Creating secret myapp_db`), for the user.
pub type Report = Vec<String>;

/// Deploys `loaded`; returns what changed. On error, the vault is as it was (but for a failed
/// undo, which the error says).
pub async fn deploy(client: &mut AdminClient<Channel>, loaded: &Loaded) -> Result<Report, DeployError> {
    let now = Inventory::read(client).await.map_err(vault)?;
    let plan = plan(loaded, &now)?;
    let mut report = Report::new();
    let mut created_objects: Vec<(Kind, String)> = Vec::new();
    let mut created_services: Vec<String> = Vec::new();
    let mut updated_services: Vec<&pb::ServiceSpec> = Vec::new();
    let result =
        apply(client, loaded, &plan, &mut report, &mut created_objects, &mut created_services, &mut updated_services)
            .await;
    if let Err(error) = result {
        let undo = undo(client, &created_objects, &created_services, &updated_services).await;
        return Err(match undo {
            Ok(()) => error,
            Err(undo) => DeployError::Undo { error: Box::new(error), undo },
        });
    }
    // Nothing else can fail now: new values go live.
    for (kind, key) in &plan.rotate_objects {
        let spec = &loaded.project.objects(*kind)[key];
        let data = value(loaded, *kind, key)?;
        let request =
            pb::RotateRequest { kind: pb_kind(*kind), reference: spec.name.clone(), data, only_if_changed: true };
        let response = client.rotate(request).await.map_err(vault)?.into_inner();
        if response.changed {
            report.push(format!("Rotating {kind} {} (version {})", spec.name, response.version));
        }
    }
    Ok(report)
}

fn value(loaded: &Loaded, kind: Kind, key: &str) -> Result<Vec<u8>, ComposeError> {
    loaded
        .values
        .get(kind, key)
        .map(|v| v.expose_secret().to_vec())
        .ok_or_else(|| ComposeError::new(format!("internal error: no value read for {kind} {key}")))
}

async fn apply<'a>(
    client: &mut AdminClient<Channel>,
    loaded: &Loaded,
    plan: &'a Plan,
    report: &mut Report,
    created_objects: &mut Vec<(Kind, String)>,
    created_services: &mut Vec<String>,
    updated_services: &mut Vec<&'a pb::ServiceSpec>,
) -> Result<(), DeployError> {
    let project = &loaded.project;
    for (kind, key) in &plan.create_objects {
        let spec: &ObjectSpec = &project.objects(*kind)[key];
        let request = pb::CreateRequest {
            kind: pb_kind(*kind),
            name: spec.name.clone(),
            labels: spec.labels.clone().into_iter().collect(),
            data: value(loaded, *kind, key)?,
        };
        report.push(format!("Creating {kind} {}", spec.name));
        client.create(request).await.map_err(|s| spec.origin.error(client::explain(&s)))?;
        created_objects.push((*kind, spec.name.clone()));
    }
    let labels = || [(PROJECT_LABEL.to_string(), project.name.clone())].into_iter().collect();
    for key in &plan.create_services {
        let spec = &project.services[key];
        let request = pb::ServiceCreateRequest {
            name: spec.name.clone(),
            secrets: specs(&spec.secrets),
            configs: specs(&spec.configs),
            labels: labels(),
            constraints: spec.constraints.clone(),
        };
        report.push(format!("Creating service {}", spec.name));
        client.service_create(request).await.map_err(|s| service_error(key, s))?;
        created_services.push(spec.name.clone());
    }
    for (key, before) in &plan.update_services {
        let spec = &project.services[key];
        let request = pb::ServiceUpdateRequest {
            reference: before.id.clone(),
            replace: true,
            secrets: specs(&spec.secrets),
            configs: specs(&spec.configs),
            constraints: spec.constraints.clone(),
            ..Default::default()
        };
        report.push(format!("Updating service {}", spec.name));
        client.service_update(request).await.map_err(|s| service_error(key, s))?;
        updated_services.push(before);
    }
    Ok(())
}

fn service_error(key: &str, status: tonic::Status) -> DeployError {
    ComposeError::new(format!("services.{key}: {}", client::explain(&status))).into()
}

/// Puts back what a failed deploy changed: updated services first (so nothing references the
/// objects about to go), then created services, then created objects.
async fn undo(
    client: &mut AdminClient<Channel>,
    objects: &[(Kind, String)],
    services: &[String],
    updated: &[&pb::ServiceSpec],
) -> Result<(), String> {
    let mut failures = Vec::new();
    for before in updated {
        let request = pb::ServiceUpdateRequest {
            reference: before.id.clone(),
            replace: true,
            secrets: current_specs(&before.secrets),
            configs: current_specs(&before.configs),
            constraints: before.constraints.clone(),
            ..Default::default()
        };
        if let Err(s) = client.service_update(request).await {
            failures.push(format!("service {}: {}", before.name, client::explain(&s)));
        }
    }
    for name in services {
        if let Err(s) = client.service_remove(pb::ServiceRemoveRequest { reference: name.clone() }).await {
            failures.push(format!("service {name}: {}", client::explain(&s)));
        }
    }
    for (kind, name) in objects {
        let request = pb::RemoveRequest { kind: pb_kind(*kind), reference: name.clone() };
        if let Err(s) = client.remove(request).await {
            failures.push(format!("{kind} {name}: {}", client::explain(&s)));
        }
    }
    if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) }
}

/// `hush compose rm`: the project's services, then the objects it created (external ones never
/// carry the project label, so they stay). Returns what was removed, in order, and what could
/// not be (each a line).
pub async fn remove(client: &mut AdminClient<Channel>, project: &str) -> Result<(Report, Vec<String>), DeployError> {
    let now = Inventory::read(client).await.map_err(vault)?;
    let mut report = Report::new();
    let mut failures = Vec::new();
    for service in now.services.iter().filter(|s| owner(&s.labels) == Some(project)) {
        match client.service_remove(pb::ServiceRemoveRequest { reference: service.id.clone() }).await {
            Ok(_) => report.push(format!("Removing service {}", service.name)),
            Err(s) => failures.push(format!("service {}: {}", service.name, client::explain(&s))),
        }
    }
    for kind in [Kind::Secret, Kind::Config] {
        for object in now.objects(kind).iter().filter(|o| owner(&o.labels) == Some(project)) {
            let request = pb::RemoveRequest { kind: pb_kind(kind), reference: object.id.clone() };
            match client.remove(request).await {
                Ok(_) => report.push(format!("Removing {kind} {}", object.name)),
                Err(s) => failures.push(format!("{kind} {}: {}", object.name, client::explain(&s))),
            }
        }
    }
    Ok((report, failures))
}
