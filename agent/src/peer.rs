//! Who is on the other end of a control-socket connection, as the kernel recorded it when the
//! peer called `connect()`: its uid and pid (`SO_PEERCRED`) and a pidfd on that very process
//! (`SO_PEERPIDFD`, Linux 6.5).
//!
//! # Why a pidfd
//! A pid is a number the kernel hands out again once its process has exited and been reaped. An
//! agent that read `/proc/PID/ns/mnt` of the peer's pid could, if the peer had exited meanwhile,
//! read the namespace of whichever process took the number, and give it a task's files. A pidfd
//! names the process itself, never a number: the mount namespace is taken through it
//! (`PIDFD_GET_MNT_NAMESPACE`, Linux 6.11), and is refused once that process has exited, whoever
//! holds its pid now. On 6.5 to 6.10 `/proc/PID/ns/mnt` is opened and the pidfd then proves that
//! the process had not exited, so that the pid was still its own ([`crate::repair::Namespace`]).
//!
//! On a kernel without `SO_PEERPIDFD` (before 6.5) the pid number is all there is: the namespace
//! is read from `/proc/PID/ns/mnt` and the pid-reuse race remains (a peer that exits and whose pid
//! is taken before the read would hand its task to the new process). The agent says so once.
#![allow(unsafe_code)]

use hush_fuse::MountNamespaceOwner;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// `SO_PEERPIDFD` (`asm-generic/socket.h`, the same on every architecture the agent builds for
/// but alpha, mips, parisc and sparc).
const SO_PEERPIDFD: libc::c_int = 77;

/// The peer of one control connection, read once at accept.
#[derive(Clone, Debug)]
pub struct Peer {
    /// `SO_PEERCRED`'s pid, in the agent's pid namespace (for logs, records and the fallback).
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    /// `SO_PEERPIDFD`: the process that connected. `Err` carries why there is none.
    pidfd: Result<Arc<OwnedFd>, PidfdMissing>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PidfdMissing {
    /// The kernel predates `SO_PEERPIDFD`.
    Unsupported,
    /// The process that connected is gone already.
    Exited,
    /// Any other failure (never guessed around).
    Failed(i32),
}

/// Why a peer's task owner cannot be established.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the process that connected has exited (its pid may belong to another process now)")]
    Exited,
    #[error("cannot identify the calling process")]
    Unknown,
    #[error("only root may ask this agent for tasks (caller uid {0})")]
    NotRoot(u32),
    #[error("reading the caller's namespace: {0}")]
    Namespace(io::Error),
}

impl Peer {
    fn of(stream: &UnixStream) -> Self {
        let cred = stream.peer_cred().ok();
        Peer {
            pid: cred.as_ref().and_then(|c| c.pid()).and_then(|p| u32::try_from(p).ok()),
            uid: cred.map(|c| c.uid()),
            pidfd: peer_pidfd(stream).map(Arc::new),
        }
    }

    /// Refuses anyone but root and the agent's own user (the socket is 0600 as well).
    pub fn check_uid(&self) -> Result<(), PeerError> {
        let uid = self.uid.ok_or(PeerError::Unknown)?;
        if uid != 0 && uid != rustix::process::geteuid().as_raw() {
            return Err(PeerError::NotRoot(uid));
        }
        Ok(())
    }

    /// The pid and the mount namespace of the very process that connected (see the module docs),
    /// with its start time (`/proc/PID/stat`, read while the pidfd proves the pid is still its own).
    pub fn namespace(&self) -> Result<(u32, MountNamespaceOwner, Option<u64>), PeerError> {
        let pid = self.pid.ok_or(PeerError::Unknown)?;
        match &self.pidfd {
            Ok(pidfd) => {
                let ns = crate::repair::Namespace::of_process(pidfd, pid as i32).map_err(|e| match e {
                    rustix::io::Errno::SRCH => PeerError::Exited,
                    e => PeerError::Namespace(e.into()),
                })?;
                let fd = ns.fd().try_clone_to_owned().map_err(PeerError::Namespace)?;
                let owner = MountNamespaceOwner::from_fd(fd).map_err(PeerError::Namespace)?;
                let start_time = crate::task_record::start_time(pid as i32);
                if crate::repair::exited(pidfd) {
                    return Err(PeerError::Exited);
                }
                Ok((pid, owner, start_time))
            }
            Err(PidfdMissing::Exited) => Err(PeerError::Exited),
            Err(PidfdMissing::Failed(errno)) => Err(PeerError::Namespace(io::Error::from_raw_os_error(*errno))),
            Err(PidfdMissing::Unsupported) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!("this kernel has no SO_PEERPIDFD (Linux < 6.5): a hush run that exits just as it connects could have its pid, and its task, taken by another process");
                });
                let owner = MountNamespaceOwner::of_process(pid).map_err(PeerError::Namespace)?;
                Ok((pid, owner, crate::task_record::start_time(pid as i32)))
            }
        }
    }
}

fn peer_pidfd(stream: &UnixStream) -> Result<OwnedFd, PidfdMissing> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_PEERPIDFD writes one int (a new descriptor) into `fd`, whose size `len` states;
    // the socket is open for the whole call.
    let rc = unsafe {
        libc::getsockopt(stream.as_fd().as_raw_fd(), libc::SOL_SOCKET, SO_PEERPIDFD, (&raw mut fd).cast(), &raw mut len)
    };
    if rc == 0 && fd >= 0 {
        // SAFETY: a descriptor the kernel just installed for us (O_CLOEXEC), owned by nobody else.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    match io::Error::last_os_error().raw_os_error().unwrap_or(0) {
        libc::ENOPROTOOPT => Err(PidfdMissing::Unsupported),
        // 6.5 to 6.15 answer EINVAL for a peer already reaped; later kernels ESRCH.
        libc::ESRCH | libc::EINVAL => Err(PidfdMissing::Exited),
        errno => Err(PidfdMissing::Failed(errno)),
    }
}

/// A control connection that knows its [`Peer`] (tonic hands it to each request).
#[derive(Debug)]
pub struct PeerStream(UnixStream);

impl Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        Peer::of(&self.0)
    }
}

/// The listener's connections, each as a [`PeerStream`].
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<PeerStream>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|conn| conn.map(PeerStream))
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that is this process: its pidfd names it, and its namespace is ours.
    #[tokio::test]
    async fn a_live_peer_is_identified_through_its_pidfd() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a);
        assert!(peer.pidfd.is_ok(), "SO_PEERPIDFD on Linux >= 6.5: {:?}", peer.pidfd);
        peer.check_uid().unwrap();
        let (pid, owner, start) = peer.namespace().unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(owner.inode(), hush_fuse::mount_namespace_of(std::process::id()).unwrap());
        assert!(start.is_some());
    }
}
