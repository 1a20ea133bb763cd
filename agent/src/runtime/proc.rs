//! What `/proc` says about a caller's container: the container named by its cgroup, and the
//! user namespace's uid/gid maps (to record ids as the container sees them).
//!
//! # Security
//! A process cannot move itself to another cgroup without privileges over the cgroup tree
//! (Docker and Podman do not grant them unless `--privileged`), so the cgroup names the container
//! a caller runs in. Host root *can* write itself into a container's cgroup: the identity check
//! therefore also compares the caller's mount namespace with the container's (see `registry`).

use std::io;
use std::path::Path;

use super::EngineKind;

/// Length of a Docker/Podman container ID in hex.
const ID_LEN: usize = 64;

fn is_container_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The container named by one cgroup path, if any: `/docker/<id>` and `docker-<id>.scope`
/// (Docker's cgroupfs and systemd drivers), `libpod-<id>` and `libpod-<id>.scope` (Podman).
fn container_in_path(path: &str) -> Option<(EngineKind, &str)> {
    let mut previous = "";
    let mut found = None;
    for segment in path.split('/') {
        let scope = segment.strip_suffix(".scope").unwrap_or(segment);
        if previous == "docker" && is_container_id(segment) {
            found = Some((EngineKind::Docker, segment));
        } else if let Some(id) = scope.strip_prefix("docker-").filter(|id| is_container_id(id)) {
            found = Some((EngineKind::Docker, id));
        } else if let Some(id) = scope.strip_prefix("libpod-").filter(|id| is_container_id(id)) {
            found = Some((EngineKind::Podman, id));
        }
        previous = segment;
    }
    found
}

/// The container a `/proc/PID/cgroup` text names. Every line that names a container must name
/// the same one, and at least one must; anything else (a host process, a mix) is no container.
pub fn container_in_cgroups(text: &str) -> Option<(EngineKind, String)> {
    let mut found: Option<(EngineKind, &str)> = None;
    for line in text.lines() {
        // `hierarchy-ID:controllers:path`; the path may itself contain ':'.
        let Some(path) = line.splitn(3, ':').nth(2) else { continue };
        if let Some(here) = container_in_path(path) {
            match found {
                Some(seen) if seen != here => return None,
                _ => found = Some(here),
            }
        }
    }
    found.map(|(kind, id)| (kind, id.to_string()))
}

/// The container process `pid` runs in, read from `/proc/PID/cgroup`; `Ok(None)` for a
/// process in no container.
pub fn container_of(proc_root: &Path, pid: u32) -> io::Result<Option<(EngineKind, String)>> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))?;
    Ok(container_in_cgroups(&text))
}

/// One user namespace id map (`/proc/PID/uid_map` or `gid_map`): (inside, outside, count) ranges.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct IdMap(Vec<(u32, u32, u32)>);

/// The id the kernel shows for an id with no mapping (`/proc/sys/kernel/overflowuid`).
const OVERFLOW_ID: u32 = 65534;

impl IdMap {
    /// Parses the text of a map file.
    pub fn parse(text: &str) -> Self {
        let ranges = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
                Some((fields.next()??, fields.next()??, fields.next()??))
            })
            .collect();
        Self(ranges)
    }

    /// Reads `/proc/PID/{uid,gid}_map`.
    pub fn read(proc_root: &Path, pid: u32, which: &str) -> io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(proc_root.join(pid.to_string()).join(which))?))
    }

    /// The id inside the namespace of host id `outside` (the overflow id when it has none).
    pub fn inside(&self, outside: u32) -> u32 {
        self.0
            .iter()
            .find(|(_, start, count)| outside >= *start && u64::from(outside) < u64::from(*start) + u64::from(*count))
            .map(|(inside, start, _)| inside + (outside - start))
            .unwrap_or(OVERFLOW_ID)
    }
}

/// Inode of process `pid`'s mount namespace.
pub fn mount_namespace(proc_root: &Path, pid: u32) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(proc_root.join(pid.to_string()).join("ns/mnt"))?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0c2db376bdbdd31d3b8d9715c43b28be436643285ecdbf4cb90daa8def4f8c8c";
    const OTHER: &str = "2996745548d7f26a4fb4af09e27724b4d89d4f29a7caa32d649a5f6f33bd8791";

    #[test]
    fn cgroups_name_docker_and_podman_containers() {
        let docker = format!("12:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/docker/{ID}\n");
        assert_eq!(container_in_cgroups(&docker), Some((EngineKind::Docker, ID.to_string())));
        let systemd = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_in_cgroups(&systemd), Some((EngineKind::Docker, ID.to_string())));
        let podman = format!("8:pids:/libpod_parent/libpod-{OTHER}\n0::/libpod_parent/libpod-{OTHER}\n");
        assert_eq!(container_in_cgroups(&podman), Some((EngineKind::Podman, OTHER.to_string())));
        let podman_systemd = format!("0::/machine.slice/libpod-{OTHER}.scope/container\n");
        assert_eq!(container_in_cgroups(&podman_systemd), Some((EngineKind::Podman, OTHER.to_string())));
    }

    #[test]
    fn host_processes_and_mixtures_are_no_container() {
        assert_eq!(container_in_cgroups("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        assert_eq!(container_in_cgroups("0::/\n"), None);
        // Two containers named on different lines: refuse rather than pick one.
        assert_eq!(container_in_cgroups(&format!("1:pids:/docker/{ID}\n0::/docker/{OTHER}\n")), None);
        // Not 64 hex characters, or not under `docker`.
        assert_eq!(container_in_cgroups(&format!("0::/docker/{}\n", &ID[..63])), None);
        assert_eq!(container_in_cgroups(&format!("0::/other/{ID}\n")), None);
        assert_eq!(container_in_cgroups(&format!("0::/docker/{}\n", ID.to_uppercase())), None);
    }

    #[test]
    fn id_maps_translate_host_ids() {
        let identity = IdMap::parse("         0          0 4294967295\n");
        assert_eq!(identity.inside(100), 100);
        let userns = IdMap::parse("0 100000 65536\n");
        assert_eq!(userns.inside(100100), 100);
        assert_eq!(userns.inside(100000), 0);
        assert_eq!(userns.inside(0), OVERFLOW_ID);
        assert_eq!(userns.inside(165536), OVERFLOW_ID);
    }
}
