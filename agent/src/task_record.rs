//! What a crashed agent leaves for the next one in its state dir: one record per `hush run` task
//! (`tasks/<task id>.json`) and the device numbers of the FUSE mounts whose copies may still sit in
//! tasks' and containers' mount namespaces (`mount.json`). Ids, pids, namespace ids and paths only:
//! never a value. Files are 0600 in the 0700 state dir, written whole (temp file, fsync, rename).
//!
//! Containers need no record: the engines list them again after a restart.

use crate::repair::Device;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Format of the files; a file of another version is ignored (its tasks are ended).
const VERSION: u32 = 1;

/// One `hush run` task as the agent that started it saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub version: u32,
    pub task_id: String,
    pub service: String,
    pub name: String,
    /// Host pid of the task's `hush run` (the process on the control socket); it lives in the
    /// task's mount namespace and the task dies with it.
    pub pid: i32,
    /// `NS_GET_MNTNS_ID` of the task's mount namespace (Linux >= 6.9): never reused while the
    /// system runs, so a process in a namespace with this id is in the task's namespace.
    pub mntns_id: Option<u64>,
    /// The namespace's inode number (reused once the namespace is freed: only with `start_time`).
    pub mntns_inode: u64,
    /// The process's start time (clock ticks after boot, `/proc/PID/stat` field 22): a process that
    /// reused the pid started later.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id`: after a reboot no record holds.
    pub boot_id: String,
}

/// The devices of mounts of ours that may still be referenced somewhere (see [`Records::devices`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MountRecord {
    version: u32,
    boot_id: String,
    devices: Vec<Device>,
}

/// The records in one state dir.
pub struct Records {
    root: PathBuf,
}

/// This boot's id (empty if unreadable: then no record matches one written with an id).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Task ids come from the vault (25 base-36 characters); anything else never names a file here.
fn valid_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Records {
    pub fn new(state_dir: &Path) -> Self {
        Self { root: state_dir.to_path_buf() }
    }

    fn tasks_dir(&self) -> PathBuf {
        self.root.join("tasks")
    }

    fn task_path(&self, task_id: &str) -> Option<PathBuf> {
        valid_task_id(task_id).then(|| self.tasks_dir().join(format!("{task_id}.json")))
    }

    /// Records a task (replacing an older record of it).
    pub fn save_task(&self, record: &TaskRecord) -> io::Result<()> {
        let path = self
            .task_path(&record.task_id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "task id not fit for a file name"))?;
        private_dir(&self.root)?;
        private_dir(&self.tasks_dir())?;
        crate::state::write_private(&path, &serde_json::to_vec(record).map_err(io::Error::other)?)
    }

    /// Forgets a task (it ended). A missing record is fine.
    pub fn remove_task(&self, task_id: &str) {
        if let Some(path) = self.task_path(task_id)
            && let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(task = task_id, error = %e, "cannot remove the task's record");
        }
    }

    /// Every task record this boot wrote; records of another boot or format are removed.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        let Ok(dir) = fs::read_dir(self.tasks_dir()) else { return Vec::new() };
        let boot = boot_id();
        let mut found = Vec::new();
        for entry in dir.flatten() {
            let path = entry.path();
            let record = fs::read(&path).ok().and_then(|bytes| serde_json::from_slice::<TaskRecord>(&bytes).ok());
            match record {
                Some(r)
                    if r.version == VERSION
                        && r.boot_id == boot
                        && self.task_path(&r.task_id) == Some(path.clone()) =>
                {
                    found.push(r)
                }
                _ => {
                    tracing::warn!(path = %path.display(), "ignoring a task record of another boot or format");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        found
    }

    /// Devices of our earlier mounts whose copies may still be in namespaces (empty after a
    /// reboot or before the first mount).
    pub fn devices(&self) -> Vec<Device> {
        let record = fs::read(self.root.join("mount.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<MountRecord>(&bytes).ok());
        match record {
            Some(r) if r.version == VERSION && r.boot_id == boot_id() => r.devices,
            _ => Vec::new(),
        }
    }

    /// Records the devices whose copies may still be in namespaces.
    pub fn save_devices(&self, devices: &[Device]) -> io::Result<()> {
        private_dir(&self.root)?;
        let record = MountRecord { version: VERSION, boot_id: boot_id(), devices: devices.to_vec() };
        crate::state::write_private(
            &self.root.join("mount.json"),
            &serde_json::to_vec(&record).map_err(io::Error::other)?,
        )
    }
}

/// Creates `dir` if needed and makes it 0700.
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// When process `pid` started (clock ticks after boot: field 22 of `/proc/PID/stat`).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) is in parentheses and may hold anything: count from its end.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(19)?.parse().ok()
}

/// A record for version [`VERSION`].
pub fn new_record(
    task_id: &str,
    service: &str,
    name: &str,
    pid: i32,
    ns: (Option<u64>, u64),
    start_time: u64,
) -> TaskRecord {
    TaskRecord {
        version: VERSION,
        task_id: task_id.to_string(),
        service: service.to_string(),
        name: name.to_string(),
        pid,
        mntns_id: ns.0,
        mntns_inode: ns.1,
        start_time,
        boot_id: boot_id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn records_round_trip_private_and_other_boots_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        let record = new_record("abc123", "web", "web.1", 42, (Some(7), 4026531840), 99);
        records.save_task(&record).unwrap();
        assert_eq!(records.tasks(), vec![record.clone()]);
        let meta = fs::metadata(dir.path().join("tasks/abc123.json")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.path().join("tasks")).unwrap().mode() & 0o777, 0o700);

        let old = TaskRecord { task_id: "old1".into(), boot_id: "another-boot".into(), ..record.clone() };
        records.save_task(&old).unwrap();
        assert_eq!(records.tasks(), vec![record]);
        assert!(!dir.path().join("tasks/old1.json").exists(), "a record of another boot is removed");

        records.remove_task("abc123");
        records.remove_task("abc123");
        assert!(records.tasks().is_empty());
        assert!(records.save_task(&new_record("../x", "web", "n", 1, (None, 1), 1)).is_err());
    }

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id() as i32;
        let first = start_time(me).expect("own start time");
        assert!(first > 0);
        assert_eq!(start_time(me), Some(first));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn devices_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        assert!(records.devices().is_empty());
        let devices = vec![Device { major: 0, minor: 53 }, Device { major: 0, minor: 61 }];
        records.save_devices(&devices).unwrap();
        assert_eq!(records.devices(), devices);
    }
}
