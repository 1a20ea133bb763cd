//! The hand-over conversation on the unix socket, and who may hold it.
//!
//! ```text
//! successor   → "HUSHTAKE" | highest format version it reads: u32 LE | 0: u32
//! predecessor → "HUSHGIVE" | format version: u32 LE | descriptor count: u32 LE   + SCM_RIGHTS
//!               (more descriptors, if any, in further 1-byte messages, 250 at a time)
//! successor   → "OK" (taken: the predecessor exits) or "NO" (refused: the predecessor exits
//!               and leaves the mount to the successor's fresh start)
//! ```
//! Descriptors, in order: the `/dev/fuse` connection, the state memfd, then the mount
//! namespaces the state refers to by index.

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, UCred,
};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

const HELLO: &[u8; 8] = b"HUSHTAKE";
const OFFER: &[u8; 8] = b"HUSHGIVE";
/// Below the kernel's `SCM_MAX_FD` (253) per message.
const FDS_PER_MESSAGE: usize = 250;
/// A state naming more descriptors than this is refused.
const MAX_FDS: u32 = 1 << 20;

/// Whether the process at the other end may take part in a hand-over: root, or our own user.
/// The kernel records the peer's credentials at `connect` (`SO_PEERCRED`); nothing the peer
/// sends can change them.
pub fn peer_allowed(stream: &UnixStream) -> Result<UCred, String> {
    let cred =
        rustix::net::sockopt::socket_peercred(stream).map_err(|e| format!("cannot read its credentials: {e}"))?;
    let me = rustix::process::geteuid();
    if cred.uid.is_root() || cred.uid == me {
        Ok(cred)
    } else {
        Err(format!(
            "uid {} (pid {}) is neither root nor the agent's own user",
            cred.uid.as_raw(),
            cred.pid.as_raw_nonzero()
        ))
    }
}

pub fn send_hello(stream: &mut UnixStream, version: u32) -> std::io::Result<()> {
    let mut msg = HELLO.to_vec();
    msg.extend_from_slice(&version.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    stream.write_all(&msg)
}

/// The highest format version the successor reads.
pub fn read_hello(stream: &mut UnixStream) -> std::io::Result<u32> {
    let mut msg = [0u8; 16];
    stream.read_exact(&mut msg)?;
    if &msg[..8] != HELLO {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a hand-over request"));
    }
    Ok(u32::from_le_bytes(msg[8..12].try_into().expect("4 bytes")))
}

pub fn send_offer(stream: &UnixStream, version: u32, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let mut header = OFFER.to_vec();
    header.extend_from_slice(&version.to_le_bytes());
    header.extend_from_slice(&(fds.len() as u32).to_le_bytes());
    let mut chunks = fds.chunks(FDS_PER_MESSAGE);
    send_with_fds(stream, &header, chunks.next().unwrap_or(&[]))?;
    for chunk in chunks {
        send_with_fds(stream, b"+", chunk)?;
    }
    Ok(())
}

fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many descriptors for one message"));
    }
    let sent = rustix::net::sendmsg(stream, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL)?;
    if sent != bytes.len() {
        return Err(std::io::Error::other("short hand-over message"));
    }
    Ok(())
}

/// The predecessor's offer: its format version and descriptors.
pub fn read_offer(stream: &UnixStream) -> std::io::Result<(u32, Vec<OwnedFd>)> {
    let mut header = [0u8; 16];
    let mut fds = recv_with_fds(stream, &mut header)?;
    if &header[..8] != OFFER {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a hand-over offer"));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let count = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    if count > MAX_FDS {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "too many descriptors"));
    }
    while fds.len() < count as usize {
        let mut more = [0u8; 1];
        let batch = recv_with_fds(stream, &mut more)?;
        if batch.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "descriptors missing"));
        }
        fds.extend(batch);
    }
    Ok((version, fds))
}

fn recv_with_fds(stream: &UnixStream, bytes: &mut [u8]) -> std::io::Result<Vec<OwnedFd>> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut filled = 0;
    let mut fds = Vec::new();
    while filled < bytes.len() {
        let got = rustix::net::recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut bytes[filled..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "descriptors truncated"));
        }
        if got.bytes == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += got.bytes;
    }
    Ok(fds)
}

pub fn send_answer(stream: &mut UnixStream, taken: bool) -> std::io::Result<()> {
    stream.write_all(if taken { b"OK" } else { b"NO" })
}

/// `Some(true)` taken, `Some(false)` refused, `None` if the successor went away first.
pub fn read_answer(stream: &mut UnixStream) -> Option<bool> {
    let mut answer = [0u8; 2];
    stream.read_exact(&mut answer).ok()?;
    match &answer {
        b"OK" => Some(true),
        b"NO" => Some(false),
        _ => None,
    }
}
