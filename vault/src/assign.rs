//! A node's assignment: every task on the node, and every service the node may run (served to
//! containers before they start), with the current version of each file the service references. Computed from the store on demand, so a reconnecting agent simply
//! receives the whole current state; values are opened one at a time, only to be sent.

use crate::model::Kind;
use crate::nodes::{NodeRecord, node_key};
use crate::objects::{self, Objects, VaultError};
use crate::services::{self, Services};
use crate::store::Op;
use crate::tasks::{TaskRecord, Tasks, task_key};
use hush_proto::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One file of a planned task: everything but its value, which is fixed by (object, version).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedFile {
    kind: Kind,
    name: String,
    object_id: String,
    version: u64,
    target: String,
    uid: u32,
    gid: u32,
    mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedTask {
    task_id: String,
    name: String,
    service: String,
    files: Vec<PlannedFile>,
}

/// A node's assignment without its values, and the store keys it was derived from. Comparing
/// plans tells whether the agent needs a new assignment without opening (or keeping) any value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    node_id: String,
    tasks: Vec<PlannedTask>,
    services: Vec<PlannedService>,
    /// The node's record, its tasks, their services and the objects they reference.
    depends_on: HashSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedService {
    service_id: String,
    name: String,
    files: Vec<PlannedFile>,
}

impl PlannedFile {
    fn value_key(&self) -> ValueKey {
        ValueKey { kind: self.kind, object_id: self.object_id.clone(), version: self.version }
    }
}

fn file_part(file: &PlannedFile) -> pb::AssignedFile {
    pb::AssignedFile {
        kind: kind_to_pb(file.kind),
        name: file.name.clone(),
        object_id: file.object_id.clone(),
        version: file.version,
        target: file.target.clone(),
        uid: file.uid,
        gid: file.gid,
        mode: file.mode,
    }
}

/// Which value a file holds: an object version (its plaintext travels apart, once per stream).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValueKey {
    kind: Kind,
    object_id: String,
    version: u64,
}

fn kind_to_pb(kind: Kind) -> i32 {
    match kind {
        Kind::Secret => pb::Kind::Secret as i32,
        Kind::Config => pb::Kind::Config as i32,
    }
}

impl Plan {
    /// Every value the plan's files hold.
    pub fn values(&self) -> HashSet<ValueKey> {
        let files = self.tasks.iter().flat_map(|t| &t.files).chain(self.services.iter().flat_map(|s| &s.files));
        files.map(PlannedFile::value_key).collect()
    }

    /// The plan's tasks, then its services, each with the values its files hold (in file
    /// order, repeats included): the order in which the stream sends them, tasks first, since a
    /// task is waiting for its files and a service directory is only there ahead of need.
    pub fn items(&self) -> Vec<Vec<ValueKey>> {
        let keys = |files: &[PlannedFile]| files.iter().map(PlannedFile::value_key).collect();
        let tasks = self.tasks.iter().map(|t| keys(&t.files));
        tasks.chain(self.services.iter().map(|s| keys(&s.files))).collect()
    }

    /// How many of [`Plan::items`] are tasks (they come first).
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// What the agent can be given while the rest of this plan is still on its way: every task
    /// and service of this plan whose values are all in `have`; for the others, the version the
    /// agent shows now (from `current`, the last snapshot it was sent), if its values are still
    /// in `have`; else nothing yet (a new task waits for its files). A partial snapshot never
    /// names a value outside `have`, so it is complete for the agent.
    pub fn partial(&self, current: Option<&Plan>, have: &HashSet<ValueKey>) -> Plan {
        let ready = |files: &[PlannedFile]| files.iter().all(|f| have.contains(&f.value_key()));
        let tasks = self.tasks.iter().filter_map(|task| {
            if ready(&task.files) {
                return Some(task.clone());
            }
            let shown = current?.tasks.iter().find(|t| t.task_id == task.task_id)?;
            ready(&shown.files).then(|| shown.clone())
        });
        let services = self.services.iter().filter_map(|service| {
            if ready(&service.files) {
                return Some(service.clone());
            }
            let shown = current?.services.iter().find(|s| s.service_id == service.service_id)?;
            ready(&shown.files).then(|| shown.clone())
        });
        Plan {
            node_id: self.node_id.clone(),
            tasks: tasks.collect(),
            services: services.collect(),
            depends_on: self.depends_on.clone(),
        }
    }

    /// The plan's tasks as stream parts: files with their metadata, without values.
    pub fn task_parts(&self) -> Vec<pb::AssignedTask> {
        self.tasks
            .iter()
            .map(|task| pb::AssignedTask {
                task_id: task.task_id.clone(),
                name: task.name.clone(),
                service: task.service.clone(),
                files: task.files.iter().map(file_part).collect(),
            })
            .collect()
    }

    /// The services this node may run, as stream parts (files without values).
    pub fn service_parts(&self) -> Vec<pb::AssignedService> {
        self.services
            .iter()
            .map(|s| pb::AssignedService {
                service_id: s.service_id.clone(),
                name: s.name.clone(),
                files: s.files.iter().map(file_part).collect(),
            })
            .collect()
    }

    /// Whether a committed operation may change this plan: it writes a key the plan was read
    /// from, starts a new task on this node, or writes a service (a new service may run here).
    pub fn affected_by(&self, op: &Op) -> bool {
        if self.depends_on.contains(op.key()) || op.key().starts_with(SERVICE_PREFIX) {
            return true;
        }
        match op {
            Op::Put { key, value } if key.starts_with(TASK_PREFIX) => {
                serde_json::from_slice::<TaskRecord>(value).is_ok_and(|task| task.node_id == self.node_id)
            }
            _ => false,
        }
    }

    pub fn same_assignment(&self, other: &Plan) -> bool {
        self.tasks == other.tasks && self.services == other.services
    }

    /// Every file this plan gives the node with a value: its tasks' first, then the service
    /// directories it serves to containers (no task).
    pub fn deliveries(&self) -> impl Iterator<Item = Delivery<'_>> {
        let tasks = self
            .tasks
            .iter()
            .flat_map(|task| task.files.iter().map(move |file| Delivery::of(Some(&task.task_id), &task.service, file)));
        let services =
            self.services.iter().flat_map(|s| s.files.iter().map(move |file| Delivery::of(None, &s.name, file)));
        tasks.chain(services)
    }
}

/// One value sent to a node, for one of its tasks or a service it serves (what a `deliver`
/// audit entry records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivery<'a> {
    pub task_id: Option<&'a str>,
    pub service: &'a str,
    pub kind: Kind,
    pub name: &'a str,
    pub object_id: &'a str,
    pub version: u64,
}

impl<'a> Delivery<'a> {
    fn of(task_id: Option<&'a str>, service: &'a str, file: &'a PlannedFile) -> Self {
        Self { task_id, service, kind: file.kind, name: &file.name, object_id: &file.object_id, version: file.version }
    }
}

const TASK_PREFIX: &str = "task/";
const SERVICE_PREFIX: &str = "service/obj/";

/// The files `service` references, at their current versions; records what they were read from.
async fn plan_files(
    objects: &Objects,
    service: &services::ServiceRecord,
    depends_on: &mut HashSet<String>,
) -> Result<Vec<PlannedFile>, VaultError> {
    let mut files = Vec::new();
    for kind in [Kind::Secret, Kind::Config] {
        for bound in service.references(kind) {
            depends_on.insert(objects::obj_key(kind, &bound.object_id));
            // An object removed after the service was written cannot be served; `rm` refuses
            // objects in use, so this only happens if the store was edited by hand.
            let Some(found) = objects.get_by_id(kind, &bound.object_id).await? else { continue };
            let r = &bound.reference;
            files.push(PlannedFile {
                kind,
                name: found.record.name.clone(),
                object_id: found.record.id.clone(),
                version: found.record.current_version(),
                target: r.absolute_target(),
                uid: r.uid,
                gid: r.gid,
                mode: r.mode,
            });
        }
    }
    Ok(files)
}

/// Reads the metadata a node's assignment is made of. A task whose service's constraints
/// exclude the node gets nothing (placement is checked again here, not only at `StartTask`).
pub async fn plan_for(objects: &Arc<Objects>, node_id: &str) -> Result<Plan, VaultError> {
    let services = Services::new(objects.clone());
    let mut service_cache = HashMap::new();
    let node = match objects.store().get(&node_key(node_id)).await? {
        Some(entry) => serde_json::from_slice::<NodeRecord>(&entry.value).ok(),
        None => None,
    };
    let mut depends_on = HashSet::from([node_key(node_id)]);
    let mut tasks = Vec::new();
    let mut node_tasks = Tasks::new(objects.store().clone()).of_node(node_id).await?;
    node_tasks.sort_by(|a, b| a.id.cmp(&b.id));
    for task in node_tasks {
        depends_on.insert(task_key(&task.id));
        depends_on.insert(services::obj_key(&task.service_id));
        if !service_cache.contains_key(&task.service_id) {
            let service = services
                .get(&task.service_id)
                .await
                .map_err(|e| VaultError::Corrupt { key: task.service_id.clone(), reason: e.to_string() })?;
            service_cache.insert(task.service_id.clone(), service.map(|(s, _)| s));
        }
        // A task whose service is gone is about to be removed with it: give it nothing.
        let Some(service) = service_cache[&task.service_id].as_ref() else { continue };
        // An unreadable or removed node gets nothing either.
        match &node {
            Some(node) if crate::placement::may_run(node, service).is_ok() => {}
            _ => continue,
        }
        let files = plan_files(objects, service, &mut depends_on).await?;
        tasks.push(PlannedTask { task_id: task.id, name: task.name, service: service.name.clone(), files });
    }
    let mut runnable = Vec::new();
    let mut all =
        services.list().await.map_err(|e| VaultError::Corrupt { key: "service/".into(), reason: e.to_string() })?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    // Only the services placement lets this node run (none for an unreadable or removed node).
    let may_run = |s: &services::ServiceRecord| node.as_ref().is_some_and(|n| crate::placement::may_run(n, s).is_ok());
    for service in all.iter().filter(|s| may_run(s)) {
        let files = plan_files(objects, service, &mut depends_on).await?;
        runnable.push(PlannedService { service_id: service.id.clone(), name: service.name.clone(), files });
    }
    Ok(Plan { node_id: node_id.to_string(), tasks, services: runnable, depends_on })
}

/// One value as a stream part, opened (and checked against tampering) just before it is sent.
/// `None`: the object is gone (the next plan will not name it).
pub async fn value_part(objects: &Objects, key: &ValueKey) -> Result<Option<pb::AssignedValue>, VaultError> {
    let Some(found) = objects.get_by_id(key.kind, &key.object_id).await? else { return Ok(None) };
    let mut data = objects.open_version(key.kind, &found.record, key.version).await?;
    Ok(Some(pb::AssignedValue {
        kind: kind_to_pb(key.kind),
        object_id: key.object_id.clone(),
        version: key.version,
        // Moved, not copied: the message holds the only copy (the allocator zeroes it when freed).
        data: data.take(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key;
    use crate::secret::SecretBytes;
    use crate::store::Store;
    use crate::store::redb::RedbStore;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn a_plan_depends_on_exactly_what_it_was_read_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let objects = Arc::new(Objects::new(store.clone(), Key::random()));
        let used =
            objects.create(Kind::Secret, "used", BTreeMap::new(), SecretBytes::new(b"v".to_vec())).await.unwrap();
        let other =
            objects.create(Kind::Secret, "other", BTreeMap::new(), SecretBytes::new(b"v".to_vec())).await.unwrap();
        let service =
            Services::new(objects.clone()).create("web", &["used".into()], &[], BTreeMap::new(), &[]).await.unwrap();
        let task = Tasks::new(store.clone()).start("n1", &service.id, "web", "", None).await.unwrap();
        let node = NodeRecord::fixture("n1");
        store.commit(crate::store::Txn::new().put(node_key("n1"), serde_json::to_vec(&node).unwrap())).await.unwrap();

        let plan = plan_for(&objects, "n1").await.unwrap();
        let put = |key: String, value: Vec<u8>| Op::Put { key, value };
        assert!(plan.affected_by(&put(objects::obj_key(Kind::Secret, &used.id), vec![])));
        assert!(plan.affected_by(&Op::Delete { key: task_key(&task.id) }));
        assert!(plan.affected_by(&put(services::obj_key(&service.id), vec![])));
        assert!(plan.affected_by(&Op::Delete { key: "node/n1".into() }));
        assert!(!plan.affected_by(&put(objects::obj_key(Kind::Secret, &other.id), vec![])));
        // New tasks count only on this node.
        let mine = TaskRecord { id: "t2".into(), node_id: "n1".into(), ..task.clone() };
        let theirs = TaskRecord { id: "t3".into(), node_id: "n2".into(), ..task };
        assert!(plan.affected_by(&put(task_key("t2"), serde_json::to_vec(&mine).unwrap())));
        assert!(!plan.affected_by(&put(task_key("t3"), serde_json::to_vec(&theirs).unwrap())));

        // Values are named by the plan and opened one by one.
        let values: Vec<ValueKey> = plan.values().into_iter().collect();
        assert_eq!(values.len(), 1);
        assert_eq!(value_part(&objects, &values[0]).await.unwrap().unwrap().data, b"v");
        let parts = plan.task_parts();
        assert_eq!((parts.len(), parts[0].files.len()), (1, 1));
        assert_eq!(parts[0].files[0].object_id, used.id);
        // Every service this node may run is planned too (same value), and any service write may
        // change that.
        let services = plan.service_parts();
        assert_eq!((services[0].name.as_str(), services[0].files[0].object_id.as_str()), ("web", used.id.as_str()));
        assert!(plan.affected_by(&put(services::obj_key("a-new-service"), vec![])));
        assert!(plan.same_assignment(&plan_for(&objects, "n1").await.unwrap()));
        objects.rotate(Kind::Secret, "used", SecretBytes::new(b"w".to_vec())).await.unwrap();
        assert!(!plan.same_assignment(&plan_for(&objects, "n1").await.unwrap()));
    }
}
