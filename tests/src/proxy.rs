//! A TCP proxy on loopback that a test controls: forward, cut (reset every connection and
//! refuse new ones), or blackhole (hold connections open and drop every byte), as etcd's own
//! robustness tests put a proxy in front of a member.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PASS: u8 = 0;
const CUT: u8 = 1;
const BLACKHOLE: u8 = 2;

/// A proxy from a free loopback port to `target`. Dropping it stops forwarding.
pub struct Proxy {
    pub addr: String,
    mode: Arc<AtomicU8>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("bound").to_string();
        let mode = Arc::new(AtomicU8::new(PASS));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (target, accept_mode, accept_open) = (target.to_string(), mode.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if accept_mode.load(Ordering::SeqCst) == CUT {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = accept_open.lock().expect("not poisoned");
                    open.push(client.try_clone().expect("clone"));
                    open.push(server.try_clone().expect("clone"));
                }
                pipe(client.try_clone().expect("clone"), server.try_clone().expect("clone"), accept_mode.clone());
                pipe(server, client, accept_mode.clone());
            }
        });
        Self { addr, mode, open }
    }

    /// Forward again (new connections go through; cut ones stay cut).
    pub fn restore(&self) {
        self.mode.store(PASS, Ordering::SeqCst);
    }

    /// Reset every open connection and refuse new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        for stream in self.open.lock().expect("not poisoned").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Keep connections open but drop every byte both ways (a partition with no reset).
    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` → `to` on a thread while the proxy forwards; drops bytes while blackholed.
fn pipe(mut from: TcpStream, mut to: TcpStream, mode: Arc<AtomicU8>) {
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => match mode.load(Ordering::SeqCst) {
                    PASS => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    BLACKHOLE => continue,
                    _ => break,
                },
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if mode.load(Ordering::SeqCst) == CUT {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
