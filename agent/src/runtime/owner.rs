//! The owner of a service directory, as the FUSE filesystem asks it on every open: "is this
//! caller a container task of service S?" (answered by [`Containers::check`]).

use super::registry::{ContainerTask, Containers, Refusal};
use hush_fuse::{Caller, Decision, DenyReason, Identity, OwnerCheck};
use std::sync::{Arc, OnceLock};

/// Containers of one service. The registry is filled in once the agent has built it (service
/// directories may be created first); until then every open is refused.
pub struct ServiceOwner {
    pub containers: Arc<OnceLock<Arc<Containers>>>,
    pub service: String,
}

/// Audit tags of a container (and its task, once it has one).
fn tags(task: Option<&str>, container: &str, name: &str, image: &str) -> hush_fuse::Tags {
    let mut tags: Vec<(&'static str, Arc<str>)> = Vec::with_capacity(4);
    if let Some(task) = task {
        tags.push(("task", Arc::from(task)));
    }
    tags.push(("container", Arc::from(container)));
    tags.push(("container_name", Arc::from(name)));
    tags.push(("image", Arc::from(image)));
    Some(Arc::from(tags))
}

fn allowed(task: &ContainerTask, mut identity: Identity) -> Decision {
    (identity.uid, identity.gid) = task.inside_ids(identity.uid, identity.gid);
    identity.tags = tags(Some(&task.task_id), &task.id, &task.name, &task.image);
    Decision::allow(identity)
}

fn refused(refusal: Refusal, mut identity: Identity) -> Decision {
    if let Some((id, name, image)) = &refusal.container {
        identity.tags = tags(None, id, name, image);
    }
    let reason = match refusal.reason {
        // A host process or a `hush run` task: the usual "not the owner".
        "NotAContainer" => DenyReason::NotOwner,
        "UnknownCaller" => DenyReason::UnknownCaller,
        other => DenyReason::Refused(other),
    };
    Decision::deny(reason, identity)
}

impl OwnerCheck for ServiceOwner {
    fn check(&self, caller: &Caller) -> Decision {
        let identity = caller.identity();
        let Some(containers) = self.containers.get() else {
            return Decision::deny(DenyReason::NotOwner, identity);
        };
        let Ok(mnt_ns) = caller.mount_namespace() else {
            return Decision::deny(DenyReason::UnknownCaller, identity);
        };
        match containers.check(caller.pid, mnt_ns, &self.service) {
            Ok(task) => allowed(&task, identity),
            Err(refusal) => refused(refusal, identity),
        }
    }

    fn describe(&self) -> String {
        format!("containers of service {}", self.service)
    }
}
