//! The same hand-over through systemd: `systemctl restart hush-agent` keeps every task's
//! files, as starting a second agent does ([`super`]), with the service manager's file
//! descriptor store in place of the hand-over socket.
//!
//! Under systemd (`NOTIFY_SOCKET` set) the agent says `READY=1` once it serves. On SIGTERM it
//! asks the manager whether the stop is part of a restart (`systemctl list-jobs`: a `restart`
//! job for its own unit) and whether its unit has a store (`FileDescriptorStoreMax=`). If so it
//! freezes the mount, writes the same sealed memfd as a hand-over, stores the `/dev/fuse`
//! descriptor, the memfd and its tasks' mount namespaces with `FDSTORE=1`, each with its own
//! `FDNAME=` ([`DEVICE`], [`STATE`], `hush-ns-N`), waits for the manager to confirm it has them
//! (`BARRIER=1`), says `STOPPING=1` and exits 0 without unmounting or ending a task. A plain
//! `systemctl stop` ends tasks and unmounts, as SIGTERM always did.
//!
//! The next agent finds the descriptors in `LISTEN_FDS`/`LISTEN_FDNAMES` ([`take`]), removes
//! them from the store at once (`FDSTOREREMOVE=1`: a stale copy kept there would keep a dead
//! agent's connection alive and offer an outdated state to a later start), and serves the same
//! connection. With no predecessor process left to wait for, it sends `FUSE_NOTIFY_RESEND`
//! right away.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// The store's name for the `/dev/fuse` connection.
pub const DEVICE: &str = "hush-fuse";
/// The store's name for the sealed state memfd.
pub const STATE: &str = "hush-state";
/// The store's names for the mount namespaces: `hush-ns-0`, `hush-ns-1`, ...
const NAMESPACE: &str = "hush-ns-";
/// How long the manager has to confirm it holds the descriptors, or to answer `systemctl`.
const MANAGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a service manager expects notifications from this process.
pub fn supervised() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// `READY=1`: the agent serves (with `Type=notify`, `systemctl start` returns now).
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd the agent is ready");
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// This process's unit, from its cgroup (`.../system.slice/hush-agent.service`).
fn own_unit() -> Option<String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // The unified hierarchy's line, or systemd's own on a v1 host.
    let line = cgroups
        .lines()
        .find(|l| l.starts_with("0::"))
        .filter(|l| l.ends_with(".service"))
        .or_else(|| cgroups.lines().find(|l| l.contains(":name=systemd:")))?;
    let unit = line.rsplit('/').next()?;
    unit.ends_with(".service").then(|| unit.to_string())
}

/// `systemctl ARGS` with a deadline; its standard output, if it succeeded.
async fn systemctl(args: &[&str]) -> Option<String> {
    let run = tokio::process::Command::new("systemctl").args(args).kill_on_drop(true).output();
    match tokio::time::timeout(MANAGER_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(Ok(out)) => {
            tracing::warn!(?args, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "systemctl failed");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(?args, error = %e, "cannot run systemctl");
            None
        }
        Err(_) => {
            tracing::warn!(?args, "systemctl did not answer in time");
            None
        }
    }
}

/// Whether this stop is one half of a `systemctl restart` of a unit with a file descriptor
/// store: the only case where the agent leaves its connection to the store. Gives the store's
/// size (`FileDescriptorStoreMax=`). Anything else (a stop, an unknown unit, no store, no
/// answer) is a stop.
pub async fn restarting() -> Option<usize> {
    let Some(unit) = own_unit() else {
        tracing::warn!("under systemd, but not in a .service cgroup: stopping");
        return None;
    };
    let jobs = systemctl(&["list-jobs", "--no-legend", "--plain", "--no-pager"]).await?;
    // "ID UNIT TYPE STATE"
    let restart = jobs.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 3 && fields[1] == unit && fields[2] == "restart"
    });
    if !restart {
        return None;
    }
    let max = systemctl(&["show", "--property=FileDescriptorStoreMax", "--value", &unit])
        .await
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if max < 2 {
        tracing::warn!(unit, max, "restarting, but the unit has no FileDescriptorStoreMax=: tasks' files go away");
        return None;
    }
    Some(max)
}

/// Stores the hand-over in the manager's file descriptor store, each descriptor under its own
/// name; returns once the manager has them all.
pub fn store(device: BorrowedFd<'_>, memfd: BorrowedFd<'_>, namespaces: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    use sd_notify::NotifyState::{FdName, FdStore};
    // One message per descriptor: a message's FDNAME= names all its descriptors, and the
    // store gives no order back, only the names.
    sd_notify::notify_with_fds(&[FdStore, FdName(DEVICE)], &[device])?;
    sd_notify::notify_with_fds(&[FdStore, FdName(STATE)], &[memfd])?;
    for (i, ns) in namespaces.iter().enumerate() {
        sd_notify::notify_with_fds(&[FdStore, FdName(&format!("{NAMESPACE}{i}"))], &[*ns])?;
    }
    barrier()
}

/// `BARRIER=1` (as `sd_notify_barrier`): the manager closes the pipe's write end once it has
/// processed every earlier message.
fn barrier() -> std::io::Result<()> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let (read, write) = std::io::pipe()?;
    sd_notify::notify_with_fds(&[sd_notify::NotifyState::Custom("BARRIER=1")], &[write.as_fd()])?;
    drop(write);
    let timeout = Timespec { tv_sec: MANAGER_TIMEOUT.as_secs() as i64, tv_nsec: 0 };
    let mut fds = [PollFd::new(&read, PollFlags::HUP)];
    match rustix::event::poll(&mut fds, Some(&timeout))? {
        0 => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "systemd did not confirm it holds the descriptors")),
        _ => Ok(()),
    }
}

/// A hand-over found in the store at start.
pub struct Stored {
    pub device: OwnedFd,
    pub memfd: OwnedFd,
    pub namespaces: Vec<OwnedFd>,
}

/// What the manager passed this process at start (`LISTEN_FDS`): a hand-over, nothing, or a
/// hand-over that cannot be used (the message says why, in one line; its descriptors are
/// closed, so a connection among them dies and the agent starts afresh). Every descriptor is
/// removed from the store. Only the first call sees anything.
pub fn take() -> Result<Option<Stored>, String> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(None);
    }
    let passed = match sd_notify::listen_fds_with_names() {
        Ok(passed) => passed.collect::<Vec<_>>(),
        Err(e) => return Err(format!("unreadable LISTEN_FDS from systemd ({e}): starting afresh")),
    };
    let mut named: Vec<(String, OwnedFd)> = passed
        .into_iter()
        .map(|(raw, name)| {
            // SAFETY: systemd passed these descriptors to this process (LISTEN_PID is ours,
            // checked by listen_fds), numbered from 3; nothing else in the process owns them,
            // and this runs once (TAKEN).
            #[allow(unsafe_code)]
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            (name, fd)
        })
        .collect();
    if named.is_empty() {
        return Ok(None);
    }
    for (name, _) in &named {
        forget(name);
    }
    let mut pick = |wanted: &str| named.iter().position(|(name, _)| name == wanted).map(|i| named.swap_remove(i).1);
    let (device, memfd) = (pick(DEVICE), pick(STATE));
    let mut namespaces = Vec::new();
    while let Some(ns) = pick(&format!("{NAMESPACE}{}", namespaces.len())) {
        namespaces.push(ns);
    }
    let strays: Vec<&str> = named.iter().map(|(name, _)| name.as_str()).collect();
    match (device, memfd) {
        (None, None) if namespaces.is_empty() => {
            tracing::warn!(?strays, "systemd passed descriptors this agent does not know: closed");
            Ok(None)
        }
        (Some(device), Some(memfd)) if strays.iter().all(|s| !s.starts_with(NAMESPACE)) => {
            Ok(Some(Stored { device, memfd, namespaces }))
        }
        _ => Err(
            "the systemd file descriptor store holds an incomplete hand-over (is FileDescriptorStoreMax= large enough?): starting afresh"
                .to_string(),
        ),
    }
}

/// `FDSTOREREMOVE=1`: the store closes its copy of `name`.
fn forget(name: &str) {
    use sd_notify::NotifyState::{FdName, FdStoreRemove};
    if let Err(e) = sd_notify::notify(&[FdStoreRemove, FdName(name)]) {
        tracing::warn!(name, error = %e, "cannot remove a descriptor from the systemd store");
    }
}
