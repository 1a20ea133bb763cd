//! Turns the vault's latest assignment and the set of tasks running here into the FUSE
//! filesystem's contents. One place decides what the filesystem shows; it is re-run whenever
//! either input changes, so the order in which they change does not matter.

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
    connected: bool,
}

pub struct Reconciler {
    fs: Arc<SecretFs>,
    state: Mutex<State>,
    /// Task IDs whose directory exists, for `hush run` to wait on.
    applied_tasks: watch::Sender<HashSet<String>>,
}

/// A value as the vault names it: (kind, object ID, version).
pub type ValueKey = (i32, String, u64);

/// The values received on the current assignment stream, shared with the files that show them.
pub type Values = HashMap<ValueKey, Arc<Plaintext>>;

pub fn value_key(kind: i32, object_id: String, version: u64) -> ValueKey {
    (kind, object_id, version)
}

fn desired(task: pb::AssignedTask, values: &Values) -> (String, TaskFiles) {
    let files = task
        .files
        .into_iter()
        .filter_map(|file| {
            let Some(content) = values.get(&value_key(file.kind, file.object_id.clone(), file.version)) else {
                // The object was removed as the snapshot was sent; the next snapshot drops the file.
                tracing::warn!(task = %task.task_id, target = %file.target, "no value for a file: skipped");
                return None;
            };
            let kind = if file.kind == pb::Kind::Config as i32 { FileKind::Config } else { FileKind::Secret };
            let meta = FileMeta { kind, name: file.name, version: file.version };
            let desired = DesiredFile { uid: file.uid, gid: file.gid, mode: file.mode, meta, content: content.clone() };
            Some((fuse_path(&file.target), desired))
        })
        .collect();
    (task.task_id, files)
}

impl Reconciler {
    pub fn new(fs: Arc<SecretFs>) -> Self {
        Self { fs, state: Mutex::new(State::default()), applied_tasks: watch::Sender::new(HashSet::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("reconciler lock poisoned only by a panic")
    }

    /// A complete snapshot from the vault: its tasks, and the stream's values they name.
    pub fn set_assignment(&self, tasks: Vec<pb::AssignedTask>, values: &Values) {
        let mut state = self.lock();
        for task in &tasks {
            state.services.insert(task.task_id.clone(), task.service.clone());
        }
        state.assigned = tasks.into_iter().map(|task| desired(task, values)).collect();
        self.apply(&mut state);
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

    pub fn running_tasks(&self) -> Vec<String> {
        self.lock().running.keys().cloned().collect()
    }

    /// Drops every task's files (the node was removed from the vault).
    pub fn clear(&self) {
        let mut state = self.lock();
        state.assigned.clear();
        state.running.clear();
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
                    let specs: Vec<FileSpec> = files
                        .iter()
                        .map(|(path, f)| FileSpec {
                            path: path.clone(),
                            uid: f.uid,
                            gid: f.gid,
                            mode: f.mode,
                            content: f.content.clone(),
                            meta: f.meta.clone(),
                        })
                        .collect();
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
        self.applied_tasks.send_replace(state.applied.keys().cloned().collect());
    }
}

fn same_layout(a: &TaskFiles, b: &TaskFiles) -> bool {
    a.len() == b.len() && a.iter().all(|(path, file)| b.get(path).is_some_and(|other| file.same_shape(other)))
}
