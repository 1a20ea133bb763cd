//! Turns the vault's latest assignment and the set of tasks running here into the FUSE
//! filesystem's contents. One place decides what the filesystem shows; it is re-run whenever
//! either input changes, so the order in which they change does not matter.
//!
//! Two kinds of directories: one per `hush run` task (`TASK_ID/root/...`), and one per service
//! this node may run (`services/NAME/`, for containers: `run/secrets/...` and `root/...`).

use hush_fuse::{FileKind, FileMeta, FileSpec, Plaintext, SecretFs, TaskOwner};
use hush_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Where secrets appear inside a task.
pub const SECRETS_DIR: &str = "/run/secrets";

/// A file as the task should see it (everything but the content decides its shape).
#[derive(Clone)]
struct DesiredFile {
    uid: u32,
    gid: u32,
    mode: u32,
    meta: FileMeta,
    content: Arc<Plaintext>,
}

impl DesiredFile {
    fn same_shape(&self, other: &DesiredFile) -> bool {
        (self.uid, self.gid, self.mode, &self.meta.name, self.meta.kind)
            == (other.uid, other.gid, other.mode, &other.meta.name, other.meta.kind)
    }
}

/// FUSE path of a target: the task dir mirrors the task's absolute paths under `root/`.
pub fn fuse_path(target: &str) -> String {
    format!("root/{}", target.trim_start_matches('/'))
}

/// Directory (under the mount root) holding every service directory.
pub const SERVICES_DIR: &str = "services";

/// A service directory's path under the mount root.
pub fn service_dir(service: &str) -> String {
    format!("{SERVICES_DIR}/{service}")
}

/// Path of a target inside a service directory: `run/secrets/...` for the secrets directory
/// (one bind for all of it), `root/<target>` for a file anywhere else (one bind each).
pub fn service_path(target: &str) -> String {
    match target.strip_prefix("/run/secrets/") {
        Some(rest) => format!("run/secrets/{rest}"),
        None => fuse_path(target),
    }
}

/// Makes the owner of a service directory (the agent's container check for that service).
pub type ServiceOwnerFactory = Box<dyn Fn(&str) -> TaskOwner + Send + Sync>;

type TaskFiles = BTreeMap<String, DesiredFile>;

#[derive(Default)]
struct State {
    /// From the vault: task → files. Values moved out of the messages, never copied, and
    /// shared by every file that holds them.
    assigned: HashMap<String, TaskFiles>,
    /// Tasks with a live `hush run` here, and their owners once known.
    running: HashMap<String, Option<TaskOwner>>,
    /// What the filesystem shows now.
    applied: HashMap<String, TaskFiles>,
    /// Task → service name, for audit events (kept after a task ends: late events still name it).
    services: HashMap<String, String>,
    /// From the vault: service this node may run → its files, at service-directory paths.
    runnable: HashMap<String, TaskFiles>,
    /// Service directories the filesystem shows now.
    applied_services: HashMap<String, TaskFiles>,
    /// Container tasks running here (task → service); their files are their service's directory.
    containers: HashMap<String, String>,
    connected: bool,
}

pub struct Reconciler {
    fs: Arc<SecretFs>,
    state: Mutex<State>,
    /// Owners of service directories; without one (no container support) none are served.
    service_owner: Option<ServiceOwnerFactory>,
    /// Task IDs whose directory exists, for `hush run` to wait on.
    applied_tasks: watch::Sender<HashSet<String>>,
    /// Whether an assignment has arrived since the agent started.
    assigned_once: watch::Sender<bool>,
}

/// A value as the vault names it: (kind, object ID, version).
pub type ValueKey = (i32, String, u64);

/// The values received on the current assignment stream, shared with the files that show them.
pub type Values = HashMap<ValueKey, Arc<Plaintext>>;

pub fn value_key(kind: i32, object_id: String, version: u64) -> ValueKey {
    (kind, object_id, version)
}

/// The files of a task or service directory, their values taken from the stream's.
fn desired_files(owner: &str, files: Vec<pb::AssignedFile>, values: &Values, path_of: fn(&str) -> String) -> TaskFiles {
    files
        .into_iter()
        .filter_map(|file| {
            let Some(content) = values.get(&value_key(file.kind, file.object_id.clone(), file.version)) else {
                // The object was removed as the snapshot was sent; the next snapshot drops the file.
                tracing::warn!(owner, target = %file.target, "no value for a file: skipped");
                return None;
            };
            let kind = if file.kind == pb::Kind::Config as i32 { FileKind::Config } else { FileKind::Secret };
            let meta = FileMeta { kind, name: file.name.into(), version: file.version };
            let desired = DesiredFile { uid: file.uid, gid: file.gid, mode: file.mode, meta, content: content.clone() };
            Some((path_of(&file.target), desired))
        })
        .collect()
}

fn desired(task: pb::AssignedTask, values: &Values) -> (String, TaskFiles) {
    let files = desired_files(&task.task_id, task.files, values, fuse_path);
    (task.task_id, files)
}

fn specs_of(files: &TaskFiles) -> Vec<FileSpec> {
    files
        .iter()
        .map(|(path, f)| FileSpec {
            path: path.clone(),
            uid: f.uid,
            gid: f.gid,
            mode: f.mode,
            content: f.content.clone(),
            meta: f.meta.clone(),
            pinned: is_bound_alone(path),
        })
        .collect()
}

/// Whether the file at this FUSE path is bind-mounted on its own (a config at an absolute
/// target: `root/...`), not reached through a bound secrets directory (`root/run/secrets/...`
/// in a task, `run/secrets/...` in a service directory). A bind holds its inode, so such a file
/// changes in place (see `FileSpec::pinned`).
fn is_bound_alone(path: &str) -> bool {
    let secrets = |prefix: &str| path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with("run/secrets/"));
    !(secrets("root/") || secrets(""))
}

impl Reconciler {
    pub fn new(fs: Arc<SecretFs>) -> Self {
        Self {
            fs,
            state: Mutex::new(State::default()),
            service_owner: None,
            applied_tasks: watch::Sender::new(HashSet::new()),
            assigned_once: watch::Sender::new(false),
        }
    }

    /// Serve a directory per service this node may run, owned by `owner(service)`.
    pub fn with_service_dirs(mut self, owner: ServiceOwnerFactory) -> Self {
        self.service_owner = Some(owner);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("reconciler lock poisoned only by a panic")
    }

    /// A complete snapshot from the vault: its tasks, and the stream's values they name.
    pub fn set_assignment(&self, tasks: Vec<pb::AssignedTask>, services: Vec<pb::AssignedService>, values: &Values) {
        let mut state = self.lock();
        for task in &tasks {
            state.services.insert(task.task_id.clone(), task.service.clone());
        }
        state.assigned = tasks.into_iter().map(|task| desired(task, values)).collect();
        state.runnable = services
            .into_iter()
            .map(|s| {
                let files = desired_files(&s.name, s.files, values, service_path);
                (s.name, files)
            })
            .collect();
        self.apply(&mut state);
        self.assigned_once.send_replace(true);
    }

    /// Returns once the first assignment is applied (which services this node runs is known).
    pub async fn first_assignment(&self) {
        let _ = self.assigned_once.subscribe().wait_for(|done| *done).await;
    }

    /// Whether this node serves `service`'s directory (the vault says it may run it).
    pub fn serves_service(&self, service: &str) -> bool {
        self.lock().applied_services.contains_key(service)
    }

    /// A container task started (its files are its service's directory).
    pub fn container_task_started(&self, task_id: &str, service: &str) {
        let mut state = self.lock();
        state.services.insert(task_id.to_string(), service.to_string());
        state.containers.insert(task_id.to_string(), service.to_string());
    }

    pub fn container_task_ended(&self, task_id: &str) {
        self.lock().containers.remove(task_id);
    }

    /// Returns whether it was connected before.
    pub fn set_connected(&self, connected: bool) -> bool {
        std::mem::replace(&mut self.lock().connected, connected)
    }

    pub fn task_started(&self, task_id: &str, owner: TaskOwner) {
        let mut state = self.lock();
        state.running.insert(task_id.to_string(), Some(owner));
        self.apply(&mut state);
    }

    pub fn task_ended(&self, task_id: &str) {
        let mut state = self.lock();
        state.running.remove(task_id);
        self.apply(&mut state);
    }

    pub fn service_of(&self, task_id: &str) -> Option<String> {
        self.lock().services.get(task_id).cloned()
    }

    /// Every task running here: `hush run` tasks and container tasks.
    pub fn running_tasks(&self) -> Vec<String> {
        let state = self.lock();
        state.running.keys().chain(state.containers.keys()).cloned().collect()
    }

    /// Task → service names and container tasks (task → service), for a successor agent.
    pub fn export_names(&self) -> (HashMap<String, String>, HashMap<String, String>) {
        let state = self.lock();
        (state.services.clone(), state.containers.clone())
    }

    /// Takes over what a predecessor served (the filesystem already holds it, imported): its
    /// tasks count as running and assigned, its service directories as runnable, until the
    /// vault's next assignment says otherwise. Nothing in the filesystem changes here. Returns
    /// the `hush run` tasks taken over.
    pub fn restore(
        &self,
        served: Vec<hush_fuse::handover::ServedTask>,
        services: HashMap<String, String>,
    ) -> Vec<String> {
        let mut state = self.lock();
        state.services = services;
        let mut tasks = Vec::new();
        for task in served {
            let files: TaskFiles = task
                .files
                .into_iter()
                .map(|f| {
                    let desired =
                        DesiredFile { uid: f.uid, gid: f.gid, mode: f.mode, meta: f.meta, content: f.content };
                    (f.path, desired)
                })
                .collect();
            match task.id.strip_prefix(&format!("{SERVICES_DIR}/")) {
                Some(name) => {
                    state.runnable.insert(name.to_string(), files.clone());
                    state.applied_services.insert(name.to_string(), files);
                }
                None => {
                    state.assigned.insert(task.id.clone(), files.clone());
                    state.applied.insert(task.id.clone(), files);
                    state.running.insert(task.id.clone(), task.owner);
                    tasks.push(task.id);
                }
            }
        }
        self.applied_tasks.send_replace(state.applied.keys().cloned().collect());
        // Which services run here is known: containers may be adopted at once.
        self.assigned_once.send_replace(true);
        tasks
    }

    /// The owner of a service directory (`services/NAME`), as this agent makes them.
    pub fn service_dir_owner(&self, dir: &str) -> Option<TaskOwner> {
        let name = dir.strip_prefix(&format!("{SERVICES_DIR}/"))?;
        self.service_owner.as_ref().map(|owner| owner(name))
    }

    /// The owner a running `hush run` task was recorded with.
    pub fn task_owner(&self, task_id: &str) -> Option<TaskOwner> {
        self.lock().running.get(task_id).cloned().flatten()
    }

    /// Drops every task's files (the node was removed from the vault).
    pub fn clear(&self) {
        let mut state = self.lock();
        state.assigned.clear();
        state.running.clear();
        state.runnable.clear();
        state.containers.clear();
        self.apply(&mut state);
    }

    pub fn watch_applied(&self) -> watch::Receiver<HashSet<String>> {
        self.applied_tasks.subscribe()
    }

    /// Files of an applied task, as (FUSE path, absolute target) pairs.
    pub fn task_targets(&self, task_id: &str) -> Vec<(String, String)> {
        let state = self.lock();
        state
            .applied
            .get(task_id)
            .map(|files| files.keys().map(|p| (p.clone(), format!("/{}", p.trim_start_matches("root/")))).collect())
            .unwrap_or_default()
    }

    /// Makes the filesystem show exactly the assigned files of running tasks.
    fn apply(&self, state: &mut State) {
        let wanted: HashMap<String, TaskFiles> = state
            .assigned
            .iter()
            .filter(|(id, _)| state.running.contains_key(*id))
            .map(|(id, files)| (id.clone(), files.clone()))
            .collect();
        let gone: Vec<String> = state.applied.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
        for id in gone {
            if let Err(e) = self.fs.remove_task(&id) {
                tracing::warn!(task = %id, error = %e, "removing task files");
            }
            state.applied.remove(&id);
        }
        for (id, files) in wanted {
            let owner = state.running.get(&id).cloned().flatten();
            match state.applied.get(&id) {
                Some(current) if same_layout(current, &files) => {
                    for (path, file) in &files {
                        if current[path].meta.version != file.meta.version
                            && let Err(e) = self.fs.update_content(&id, path, file.content.clone(), file.meta.version)
                        {
                            tracing::warn!(task = %id, path, error = %e, "rotating file");
                        }
                    }
                }
                current => {
                    let specs = specs_of(&files);
                    // A running task's files change in place (service update): its /run/secrets
                    // bind stays valid. A new task gets its directory.
                    let result = if current.is_some() {
                        self.fs.set_files(&id, specs)
                    } else {
                        self.fs.add_task(&id, owner, specs)
                    };
                    if let Err(e) = result {
                        tracing::error!(task = %id, error = %e, "setting task files");
                        continue;
                    }
                }
            }
            state.applied.insert(id, files);
        }
        self.apply_services(state);
        self.applied_tasks.send_replace(state.applied.keys().cloned().collect());
    }

    /// Makes the filesystem show exactly the directories of the services this node may run.
    fn apply_services(&self, state: &mut State) {
        let Some(owner) = &self.service_owner else { return };
        let gone: Vec<String> =
            state.applied_services.keys().filter(|name| !state.runnable.contains_key(*name)).cloned().collect();
        for name in gone {
            let running = state.containers.values().filter(|s| **s == name).count();
            tracing::warn!(
                service = %name,
                running_containers = running,
                "service no longer runs on this node (removed, or its constraints exclude this node): its directory and its containers' files are gone"
            );
            if let Err(e) = self.fs.remove_task(&service_dir(&name)) {
                tracing::warn!(service = %name, error = %e, "removing service directory");
            }
            state.applied_services.remove(&name);
        }
        for (name, files) in &state.runnable {
            let dir = service_dir(name);
            let result = match state.applied_services.get(name) {
                Some(current) if same_layout(current, files) => {
                    for (path, file) in files {
                        if current[path].meta.version != file.meta.version
                            && let Err(e) = self.fs.update_content(&dir, path, file.content.clone(), file.meta.version)
                        {
                            tracing::warn!(service = %name, path, error = %e, "rotating file");
                        }
                    }
                    Ok(())
                }
                // Changed in place: containers' binds of the directory stay valid.
                Some(_) => self.fs.set_files(&dir, specs_of(files)),
                None => self.fs.add_task(&dir, Some(owner(name)), specs_of(files)),
            };
            match result {
                Ok(()) => {
                    state.applied_services.insert(name.clone(), files.clone());
                }
                Err(e) => tracing::error!(service = %name, error = %e, "setting service files"),
            }
        }
    }
}

fn same_layout(a: &TaskFiles, b: &TaskFiles) -> bool {
    a.len() == b.len() && a.iter().all(|(path, file)| b.get(path).is_some_and(|other| file.same_shape(other)))
}
