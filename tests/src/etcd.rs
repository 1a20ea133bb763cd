//! Real etcd clusters for tests: Debian's `etcd` on loopback ports picked by the kernel, data
//! dirs in tmpfs, one or three members, and controls to kill, pause and restart a member.

use crate::wait_for;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Free loopback ports: each bound to port 0 and read back, all held until every one is picked
/// so no two are the same, then released for etcd to bind.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect()
}

/// A temp dir in tmpfs when there is one: etcd fsyncs every commit, and this etcd (3.4.23) has
/// no `--unsafe-no-fsync`.
pub fn fast_temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("temp dir in /dev/shm")
    } else {
        tempfile::tempdir().expect("temp dir")
    }
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    metrics: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// TLS material of a cluster started with [`EtcdCluster::start_tls`].
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A running etcd cluster. Dropping it kills every member.
pub struct EtcdCluster {
    pub temp: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    tls: Option<EtcdTlsFiles>,
}

impl EtcdCluster {
    /// `size` members on plain HTTP; returns once the cluster has a leader.
    pub fn start(size: usize) -> Self {
        Self::start_with(size, false)
    }

    /// One member that serves clients only over TLS with client certificates.
    pub fn start_tls() -> Self {
        Self::start_with(1, true)
    }

    fn start_with(size: usize, tls: bool) -> Self {
        let temp = fast_temp_dir();
        let ports = free_ports(size * 3);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[3 * i],
                peer: ports[3 * i + 1],
                metrics: ports[3 * i + 2],
                data_dir: temp.path().join(format!("m{i}.etcd")),
                log: temp.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let tls = tls.then(|| write_tls_files(temp.path()));
        let mut cluster = Self { temp, members, initial_cluster, tls };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_for_leader();
        cluster
    }

    fn scheme(&self) -> &str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize) {
        let scheme = self.scheme().to_string();
        let m = &self.members[i];
        assert!(m.child.is_none(), "member {i} already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).expect("etcd log");
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client);
        let peer_url = format!("http://127.0.0.1:{}", m.peer);
        let mut command = Command::new("etcd");
        command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", m.metrics)])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &format!("hush-test-{}", std::process::id())])
            // Two shared cores: keep elections from firing because a member was briefly starved.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(self.temp.path().join("server.pem"))
                .arg("--key-file")
                .arg(self.temp.path().join("server.key"))
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("etcd starts");
        self.members[i].child = Some(child);
    }

    /// `127.0.0.1:PORT` of every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("127.0.0.1:{}", m.client)).collect()
    }

    /// `etcd://` URL of the whole cluster, keys under `prefix` (e.g. `/t1`).
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}{prefix}", self.endpoints().join(","))
    }

    pub fn tls_files(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.members[i].child.as_ref().expect("running").id()
    }

    /// Which member leads, if a running one says so (from its metrics, which need no client).
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).find(|&i| {
            http_get(self.members[i].metrics, "/metrics").is_some_and(|m| m.contains("\netcd_server_is_leader 1"))
        })
    }

    /// Waits until some running member leads and a running member reports healthy.
    pub fn wait_for_leader(&self) -> usize {
        let leader = wait_for("an etcd leader", || self.leader());
        wait_for("etcd healthy", || {
            http_get(self.members[leader].metrics, "/health").filter(|b| b.contains("\"health\":\"true\"")).map(|_| ())
        });
        leader
    }

    /// SIGKILL member `i`, then reap it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again on its data dir (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// SIGSTOP member `i` (it keeps its sockets but answers nothing).
    pub fn pause(&self, i: usize) {
        signal(self.pid(i), rustix::process::Signal::STOP);
    }

    pub fn resume(&self, i: usize) {
        signal(self.pid(i), rustix::process::Signal::CONT);
    }

    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                // A paused member would ignore SIGKILL's exit until continued on some kernels.
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(self.pid(i) as i32).expect("pid"),
                    rustix::process::Signal::CONT,
                );
            }
            self.kill9(i);
        }
    }
}

pub fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal delivered");
}

/// A plain HTTP/1.1 GET on loopback; `None` if nothing answers in a second.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.1 200").then_some(body)
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made now.
fn write_tls_files(dir: &Path) -> EtcdTlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names).expect("params").signed_by(&key, &issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["hush-vault".into()]);
    let files = EtcdTlsFiles {
        ca: dir.join("ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    for (path, text) in [
        (files.ca.clone(), ca_cert.pem()),
        (dir.join("server.pem"), server_cert),
        (dir.join("server.key"), server_key),
        (files.client_cert.clone(), client_cert),
        (files.client_key.clone(), client_key),
    ] {
        std::fs::write(path, text).expect("write TLS file");
    }
    files
}
