//! The vault's bounded acceptor: TCP connections in, TLS streams out, with a cost ceiling for
//! every peer. Each connection holds a slot from accept to close (handshaking or serving);
//! one peer address may hold [`Limits::per_peer`] slots and all together [`Limits::total`];
//! a connection beyond either is closed at once (never left in the kernel's backlog, so other
//! peers keep being accepted). Handshakes run concurrently and end after
//! [`Limits::handshake_timeout`].
//!
//! # Security
//! Half-open connections cost the vault a file descriptor each: without these limits 1,100 of
//! them from one address used up a 1,024 open-files limit and stalled every admin. The vault
//! also raises its own open-files soft limit to the hard limit when it starts
//! ([`raise_open_files_limit`]), and keeps some descriptors for its store and log files.

use crate::ratelimit::peer_key;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Descriptors kept for everything but connections (store, log files, agent streams' timers).
const RESERVED_FDS: u64 = 128;
/// How often a refusal or an accept error is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub per_peer: usize,
    pub total: usize,
}

impl Limits {
    /// 10 s handshakes, 256 connections per peer address (an IPv6 /64), 4,096 in all — or fewer
    /// if the open-files limit is lower. `HUSH_HANDSHAKE_TIMEOUT_MS`, `HUSH_MAX_CONNECTIONS_PER_PEER`
    /// and `HUSH_MAX_CONNECTIONS` override them.
    pub fn from_env(open_files: u64) -> Self {
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let fitting = open_files.saturating_sub(RESERVED_FDS).max(16) as usize;
        Self {
            handshake_timeout: Duration::from_millis(env("HUSH_HANDSHAKE_TIMEOUT_MS").unwrap_or(10_000)),
            per_peer: env("HUSH_MAX_CONNECTIONS_PER_PEER").map_or(256, |v| v as usize),
            total: env("HUSH_MAX_CONNECTIONS").map_or(4096, |v| v as usize).min(fitting),
        }
    }
}

/// Raises the open-files soft limit to the hard limit; returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    if soft != hard {
        match setrlimit(Resource::Nofile, Rlimit { current: hard, maximum: hard }) {
            Ok(()) => {
                tracing::info!(from = ?soft, to = ?hard, "raised the open-files limit");
                return hard.unwrap_or(u64::MAX);
            }
            Err(e) => tracing::warn!(error = %e, soft = ?soft, "could not raise the open-files limit"),
        }
    }
    soft.unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// Slots in use, by peer.
pub struct Slots {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// One connection's slot, given back on drop.
pub struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

impl Slots {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, counts: Mutex::default() })
    }

    /// A slot for a connection from `peer`, unless the peer or everyone is at the limit.
    pub fn acquire(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let peer = peer_key(peer);
        let mut counts = self.counts.lock().expect("not poisoned");
        let held = counts.per_peer.get(&peer).copied().unwrap_or(0);
        if counts.total >= self.limits.total || held >= self.limits.per_peer {
            return None;
        }
        counts.total += 1;
        *counts.per_peer.entry(peer).or_default() += 1;
        Some(Slot { slots: self.clone(), peer })
    }

    pub fn in_use(&self) -> usize {
        self.counts.lock().expect("not poisoned").total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().expect("not poisoned");
        counts.total -= 1;
        if let Some(held) = counts.per_peer.get_mut(&self.peer) {
            *held -= 1;
            if *held == 0 {
                counts.per_peer.remove(&self.peer);
            }
        }
    }
}

/// A served connection with its slot.
pub struct Limited<S> {
    inner: S,
    _slot: Slot,
}

impl<S: Connected> Connected for Limited<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Logs at most once per [`LOG_EVERY`], with how many times it was asked to since.
struct Sparse {
    last: Option<Instant>,
    skipped: u64,
}

impl Sparse {
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

pub type Connection = Limited<TlsStream<TcpStream>>;

/// Accepted connections after their TLS handshake, within `limits`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: Limits,
) -> ReceiverStream<std::io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Slots::new(limits);
    tracing::info!(?limits, "accepting connections");
    tokio::spawn(async move {
        let (mut refused_log, mut error_log) = (Sparse { last: None, skipped: 0 }, Sparse { last: None, skipped: 0 });
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    if let Some(skipped) = error_log.due() {
                        tracing::warn!(error = %e, since_last = skipped, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = slots.acquire(peer.ip()) else {
                if let Some(skipped) = refused_log.due() {
                    tracing::warn!(%peer, in_use = slots.in_use(), since_last = skipped, "connection refused: at the connection limit");
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(Limited { inner: stream, _slot: slot })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_per_peer_and_in_all_and_given_back() {
        let slots = Slots::new(Limits { handshake_timeout: Duration::from_secs(1), per_peer: 2, total: 3 });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let c: IpAddr = "127.0.0.4".parse().unwrap();
        let a1 = slots.acquire(a).unwrap();
        let _a2 = slots.acquire(a).unwrap();
        assert!(slots.acquire(a).is_none(), "a third from one peer");
        let _b1 = slots.acquire(b).unwrap();
        assert!(slots.acquire(c).is_none(), "past the total");
        drop(a1);
        assert_eq!(slots.in_use(), 2);
        assert!(slots.acquire(c).is_some());
    }

    #[test]
    fn limits_fit_the_open_files_limit() {
        let limits = Limits::from_env(1024);
        assert_eq!(limits.total, 1024 - RESERVED_FDS as usize);
        assert_eq!(Limits::from_env(1 << 20).total, 4096);
    }
}
