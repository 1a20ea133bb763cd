//! A node's assignment: every task on the node with the current version of each file its
//! service references, values included. Computed from the store on demand, so a reconnecting
//! agent simply receives the whole current state.

use crate::model::Kind;
use crate::objects::{Objects, VaultError};
use crate::services::Services;
use crate::tasks::Tasks;
use hush_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::Arc;

/// Keys whose change may alter some node's assignment.
pub fn affects_assignments(key: &str) -> bool {
    ["task/", "service/", "secret/obj/", "config/obj/", "node/"].iter().any(|p| key.starts_with(p))
}

pub async fn assignment_for(
    objects: &Arc<Objects>,
    node_id: &str,
    revision: u64,
) -> Result<pb::Assignment, VaultError> {
    let services = Services::new(objects.clone());
    let mut service_cache = HashMap::new();
    let mut tasks = Vec::new();
    let mut node_tasks = Tasks::new(objects.store().clone()).of_node(node_id).await?;
    node_tasks.sort_by(|a, b| a.id.cmp(&b.id));
    for task in node_tasks {
        if !service_cache.contains_key(&task.service_id) {
            let service = services
                .get(&task.service_id)
                .await
                .map_err(|e| VaultError::Corrupt { key: task.service_id.clone(), reason: e.to_string() })?;
            service_cache.insert(task.service_id.clone(), service.map(|(s, _)| s));
        }
        // A task whose service is gone is about to be removed with it: give it nothing.
        let Some(service) = service_cache[&task.service_id].as_ref() else { continue };
        let mut files = Vec::new();
        for kind in [Kind::Secret, Kind::Config] {
            for bound in service.references(kind) {
                // An object removed after the service was written cannot be served; `rm` refuses
                // objects in use, so this only happens if the store was edited by hand.
                let Some(found) = objects.get_by_id(kind, &bound.object_id).await? else { continue };
                let version = found.record.current_version();
                let data = objects.open_version(kind, &found.record, version).await?;
                let r = &bound.reference;
                files.push(pb::AssignedFile {
                    kind: match kind {
                        Kind::Secret => pb::Kind::Secret as i32,
                        Kind::Config => pb::Kind::Config as i32,
                    },
                    name: found.record.name.clone(),
                    object_id: found.record.id.clone(),
                    version,
                    target: r.absolute_target(),
                    uid: r.uid,
                    gid: r.gid,
                    mode: r.mode,
                    data: data.expose_secret().to_vec(),
                });
            }
        }
        tasks.push(pb::AssignedTask { task_id: task.id, name: task.name, service: service.name.clone(), files });
    }
    Ok(pb::Assignment { revision, tasks })
}
