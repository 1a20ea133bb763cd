//! Graceful restart and upgrade: a running agent hands its FUSE connection and everything it
//! serves to a successor started with the same `--state-dir`, so that no task or container
//! sees its files go away.
//!
//! The predecessor listens on `STATE_DIR/handover.sock` (0600, in the 0700 state dir; a peer
//! must also be root or the agent's own user, checked with `SO_PEERCRED`). A successor connects
//! and asks ([`wire`]); the predecessor stops answering FUSE requests (new ones wait, unread or
//! unanswered, in the kernel), writes its state into a sealed memfd ([`format`]) and passes the
//! `/dev/fuse` descriptor, the memfd and its tasks' mount namespaces with `SCM_RIGHTS`. The
//! successor imports the state, serves the same connection (no new mount, no `FUSE_INIT`),
//! answers "OK", waits for the predecessor to exit (it does at once), then asks the kernel to
//! send again what the predecessor had read but not answered (`FUSE_NOTIFY_RESEND`). Readers
//! wait for the switch; none gets an error.
//!
//! A successor that cannot read the predecessor's format (an upgrade across an incompatible
//! change) says so in one line and answers "NO"; the predecessor then exits as if it had crashed
//! and the successor starts afresh (a new mount, then repair of every task's view).
//!
//! Under systemd, `systemctl restart` hands over the same state through the service manager's
//! file descriptor store instead ([`systemd`]). Either way the audit events the predecessor had
//! not delivered travel in the state, and the successor ships them.

pub mod format;
pub mod systemd;
pub mod wire;

use crate::reconcile::Reconciler;
use crate::runtime::registry::Containers;
use anyhow::{Context, bail};
use hush_fuse::{MountGuard, Plaintext, SecretFs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long either side waits for the other's next message.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the successor waits for the predecessor to exit after taking over.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The hand-over socket of a state dir.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("handover.sock")
}

/// The predecessor's side: what it hands over when asked.
pub struct Giver {
    pub mount: Arc<MountGuard>,
    pub fs: Arc<SecretFs>,
    pub reconciler: Arc<Reconciler>,
    pub containers: Arc<Containers>,
    /// Hand-overs this mount went through before (passed on, plus one).
    pub takeovers: u64,
    /// The audit shipper's undelivered events, carried to the successor.
    pub audit: crate::audit::Pending,
}

/// How long a hand-over waits for the audit shipper to give up its queue.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(2);

/// A hand-over ready to pass: the descriptors and what must be put back if it does not happen.
struct Offer {
    memfd: OwnedFd,
    namespaces: Vec<OwnedFd>,
    audit: Vec<hush_proto::v1::AccessEvent>,
}

/// Binds the hand-over socket (replacing a leftover file: a live predecessor was asked first).
pub fn listen(state_dir: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    let listener =
        tokio::net::UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

impl Giver {
    /// Answers hand-over requests for the agent's life. A successful hand-over ends the process
    /// (exit status 0) without unmounting or ending any task.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::UnixListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "hand-over socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let stream = match stream.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "hand-over socket");
                    continue;
                }
            };
            let peer = match wire::peer_allowed(&stream) {
                Ok(cred) => cred,
                Err(why) => {
                    tracing::warn!("refused a hand-over request: {why}");
                    continue;
                }
            };
            let giver = self.clone();
            // One at a time: the next request waits for this one's outcome.
            let _ = tokio::task::spawn_blocking(move || giver.give(stream, peer.pid.as_raw_nonzero().get())).await;
        }
    }

    /// Hands over to the successor at the other end of `stream`; returns only if it did not
    /// take over (the mount serves again).
    fn give(&self, mut stream: UnixStream, pid: i32) {
        let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
        let reads = match wire::read_hello(&mut stream) {
            Ok(reads) => reads,
            Err(e) => {
                tracing::warn!(pid, error = %e, "a hand-over request was not one");
                return;
            }
        };
        tracing::info!(pid, reads, "handing over to a successor");
        self.mount.freeze();
        // A successor that reads only an older format gets that one (it may still refuse it).
        let version = reads.clamp(format::OLDEST, format::VERSION);
        let offer = match self.prepare(version) {
            Ok(offer) => offer,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot hand over: serving on");
                self.mount.thaw();
                return;
            }
        };
        let device = self.mount.device().expect("prepared: the mount has a connection");
        let mut fds = vec![device, offer.memfd.as_fd()];
        fds.extend(offer.namespaces.iter().map(|ns| ns.as_fd()));
        if let Err(e) = wire::send_offer(&stream, version, &fds) {
            tracing::error!(error = %e, "cannot send the hand-over: serving on");
            self.audit.restore(offer.audit);
            self.mount.thaw();
            return;
        }
        match wire::read_answer(&mut stream) {
            Some(true) => {
                tracing::info!(pid, "handed over: exiting");
                std::process::exit(0);
            }
            Some(false) => {
                tracing::warn!(
                    pid,
                    "the successor cannot read this agent's hand-over: exiting, leaving it a fresh start"
                );
                std::process::exit(0);
            }
            None => {
                tracing::warn!(pid, "the successor went away before taking over: serving on");
                self.audit.restore(offer.audit);
                self.mount.thaw();
            }
        }
    }

    /// The state of the frozen mount, written into a sealed memfd in format `version`, with
    /// the audit events not yet delivered.
    fn prepare(&self, version: u32) -> anyhow::Result<Offer> {
        self.mount.device().context("the mount has no connection")?;
        let export = self.fs.export().context("exporting the filesystem")?;
        let (services, _) = self.reconciler.export_names();
        let audit = match self.audit.take(AUDIT_TIMEOUT) {
            Some(events) => events,
            None => {
                tracing::warn!("the audit shipper is busy with the vault: its undelivered events stay behind");
                Vec::new()
            }
        };
        let state = format::AgentState {
            fuse_version: self.mount.version(),
            fs: export.state,
            services,
            container_tasks: self.containers.export(),
            content_lengths: export.contents.iter().map(|c| c.len() as u64).collect(),
            takeovers: self.takeovers,
            pid: std::process::id(),
            audit: format::encode_events(&audit),
        };
        if version < 2 && !audit.is_empty() {
            tracing::warn!(
                events = audit.len(),
                "the successor reads hand-over format 1: undelivered audit events stay behind"
            );
        }
        let memfd = match format::write(&state, &export.contents, version) {
            Ok(memfd) => memfd,
            Err(e) => {
                self.audit.restore(audit);
                return Err(e.into());
            }
        };
        Ok(Offer { memfd, namespaces: export.namespaces, audit })
    }

    /// `systemctl restart`: leaves the connection and the state in systemd's file descriptor
    /// store ([`systemd`]) and exits 0. Returns only if that failed (the mount serves again;
    /// the agent then stops as for `systemctl stop`).
    /// `max`: the store's size (`FileDescriptorStoreMax=`).
    pub fn hand_to_store(&self, max: usize) -> anyhow::Result<()> {
        tracing::info!(
            "systemctl restart: leaving the mount to the next agent through systemd's file descriptor store"
        );
        self.mount.freeze();
        let stored = self.prepare(format::VERSION).and_then(|offer| {
            if offer.namespaces.len() + 2 > max {
                self.audit.restore(offer.audit);
                bail!(
                    "{} descriptors to store (the connection, the state, {} tasks' namespaces) but FileDescriptorStoreMax={max}",
                    offer.namespaces.len() + 2,
                    offer.namespaces.len()
                );
            }
            let device = self.mount.device().expect("prepared: the mount has a connection");
            let namespaces: Vec<_> = offer.namespaces.iter().map(|ns| ns.as_fd()).collect();
            match systemd::store(device, offer.memfd.as_fd(), &namespaces) {
                Ok(()) => Ok(()),
                Err(e) => {
                    self.audit.restore(offer.audit);
                    Err(anyhow::Error::new(e).context("storing the hand-over in systemd's file descriptor store"))
                }
            }
        });
        match stored {
            Ok(()) => {
                systemd::stopping();
                tracing::info!("handed over to systemd's file descriptor store: exiting");
                std::process::exit(0);
            }
            Err(e) => {
                self.mount.thaw();
                Err(e)
            }
        }
    }
}

/// How this agent starts.
pub enum Start {
    /// No agent runs with this state dir.
    Fresh,
    /// A predecessor handed over (to be [`Inherited::accept`]ed once serving).
    Taken(Box<Inherited>),
    /// A predecessor offered a hand-over this build cannot read; it has exited. The message
    /// says why, in one line.
    Refused(String),
}

/// The conversation with a predecessor that handed over, to be answered.
pub struct Handshake {
    stream: UnixStream,
    pidfd: OwnedFd,
    /// The predecessor's pid.
    pub pid: i32,
}

/// What a predecessor handed over.
pub struct Inherited {
    /// The predecessor waiting for an answer (`None`: it handed over through systemd's store
    /// and has exited).
    pub handshake: Option<Handshake>,
    /// The `/dev/fuse` connection.
    pub device: OwnedFd,
    pub state: format::AgentState,
    pub contents: Vec<Arc<Plaintext>>,
    pub namespaces: Vec<OwnedFd>,
}

/// Asks an agent running with this state dir to hand over.
pub fn take_over(state_dir: &Path) -> anyhow::Result<Start> {
    let path = socket_path(state_dir);
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(Start::Fresh);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot reach {}", path.display())),
    };
    let peer = wire::peer_allowed(&stream).map_err(|why| anyhow::anyhow!("{} is held by {why}", path.display()))?;
    let pid = peer.pid.as_raw_nonzero().get();
    // Taken while the predecessor waits for us: this pid is still it.
    let pidfd = rustix::process::pidfd_open(peer.pid, rustix::process::PidfdFlags::empty())
        .context("cannot watch the running agent")?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    wire::send_hello(&mut stream, format::VERSION).context("asking the running agent to hand over")?;
    let (version, mut fds) = wire::read_offer(&stream)
        .with_context(|| format!("the running agent (pid {pid}) did not hand over; stop it first"))?;
    let refuse = |mut stream: UnixStream, pidfd: OwnedFd, why: String| -> anyhow::Result<Start> {
        let _ = wire::send_answer(&mut stream, false);
        wait_exit(&pidfd, pid);
        Ok(Start::Refused(why))
    };
    if !(format::OLDEST..=format::VERSION).contains(&version) {
        return refuse(
            stream,
            pidfd,
            format!(
                "the running agent (pid {pid}) hands over in format version {version}; this build reads versions {} to {}: starting afresh",
                format::OLDEST,
                format::VERSION
            ),
        );
    }
    if fds.len() < 2 || !is_fuse_device(&fds[0]) {
        return refuse(
            stream,
            pidfd,
            format!("the running agent (pid {pid}) passed no FUSE connection: starting afresh"),
        );
    }
    let namespaces = fds.split_off(2);
    let memfd = fds.pop().expect("two descriptors");
    let device = fds.pop().expect("one descriptor");
    let (state, contents) = match format::read(&memfd) {
        Ok(read) => read,
        Err(e) => {
            return refuse(stream, pidfd, format!("cannot read the running agent's hand-over ({e}): starting afresh"));
        }
    };
    let handshake = Some(Handshake { stream, pidfd, pid });
    Ok(Start::Taken(Box::new(Inherited { handshake, device, state, contents, namespaces })))
}

/// What systemd's file descriptor store passed this agent at start (`systemctl restart`).
pub fn take_from_store() -> Start {
    let stored = match systemd::take() {
        Ok(Some(stored)) => stored,
        Ok(None) => return Start::Fresh,
        Err(why) => return Start::Refused(why),
    };
    if !is_fuse_device(&stored.device) {
        return Start::Refused("systemd's file descriptor store passed no FUSE connection: starting afresh".into());
    }
    match format::read(&stored.memfd) {
        Ok((state, contents)) => Start::Taken(Box::new(Inherited {
            handshake: None,
            device: stored.device,
            state,
            contents,
            namespaces: stored.namespaces,
        })),
        // The connection is closed here (its last holder): the mount dies, and is replaced.
        Err(e) => Start::Refused(format!("cannot read the hand-over in systemd's store ({e}): starting afresh")),
    }
}

impl Handshake {
    /// Tells the predecessor its connection is served here, and waits for it to exit.
    pub fn accept(mut self) -> anyhow::Result<()> {
        wire::send_answer(&mut self.stream, true).context("answering the running agent")?;
        if !wait_exit(&self.pidfd, self.pid) {
            bail!("the previous agent (pid {}) did not exit after handing over", self.pid);
        }
        Ok(())
    }

    /// Gives up the hand-over (the state could not be used): the predecessor exits and this
    /// agent starts afresh.
    pub fn refuse(mut self) {
        let _ = wire::send_answer(&mut self.stream, false);
        wait_exit(&self.pidfd, self.pid);
    }
}

/// Waits for the process behind `pidfd` to exit; kills it after [`EXIT_TIMEOUT`]. Returns
/// whether it exited by itself.
fn wait_exit(pidfd: &OwnedFd, pid: i32) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let timeout = Timespec { tv_sec: EXIT_TIMEOUT.as_secs() as i64, tv_nsec: 0 };
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    if matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(n) if n > 0) {
        return true;
    }
    tracing::warn!(pid, "the previous agent did not exit in time: killing it");
    let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let _ = rustix::event::poll(&mut fds, Some(&timeout));
    false
}

/// Whether `fd` is `/dev/fuse` (character device 10:229).
fn is_fuse_device(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice
            && rustix::fs::major(st.st_rdev) == 10
            && rustix::fs::minor(st.st_rdev) == 229
    })
}
