//! Assignment benchmark (issue 8 item 4): one node runs 100 tasks, each of its own service with
//! 10 configs of the largest allowed size (1,023,999 bytes), all distinct: about 1 GB that the
//! vault must send the node without one unbounded message. Every task checks every byte count
//! and the head of every file; then one config of every service is rotated and every task must
//! see its new version. The agent's and the vault's memory are sampled throughout.
//!
//! Run: `cargo build --release --bins && cargo bench -p hush-tests --bench assignments` (root,
//! /dev/fuse). `HUSH_BENCH_TASKS`, `HUSH_BENCH_FILES` and `HUSH_BENCH_SIZE` change the shape.
//! Creates of 1 KiB values (the same 8 writers) are the baseline for the creates of large ones.
//!
//! - Tasks are real `hush run --service svc-N` tasks (a shell reading commands from stdin, so
//!   each check reads the files through the agent's FUSE mount as a task would), started one after
//!   another (each once the previous one has read all its files).
//! - Memory: VmRSS of both daemons sampled every 10 ms (peak per phase), against a baseline
//!   measured in the same run (both idle, no configs); the agent's growth is also given against
//!   the bytes it must hold (one copy of every value is the floor: the files are served from
//!   the agent's memory).
//!
//! Figures are printed, never asserted (but every file must arrive whole, and every rotation).

use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use hush_tests::{TaskSession, TestAgent, TestVault};
use hush_vault::client::{TlsBundle, connect_channel};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SIZE: usize = 1_023_999;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    hush_tests::proc_status_kib(pid, "VmRSS:")
}

/// Peak VmRSS of each pid while a phase runs.
struct Sampler {
    done: Arc<AtomicBool>,
    peaks: Vec<Arc<AtomicU64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pids: &[u32]) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let peaks: Vec<_> = pids.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
        let (pids, thread_done, thread_peaks) = (pids.to_vec(), done.clone(), peaks.clone());
        let thread = std::thread::spawn(move || {
            while !thread_done.load(Ordering::Relaxed) {
                for (pid, peak) in pids.iter().zip(&thread_peaks) {
                    peak.fetch_max(rss_kib(*pid), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self { done, peaks, thread: Some(thread) }
    }

    /// Peak KiB of each pid, in order.
    fn stop(mut self) -> Vec<u64> {
        self.done.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("sampler");
        self.peaks.iter().map(|p| p.load(Ordering::Relaxed)).collect()
    }
}

/// A distinct value of `size` bytes whose first 24 bytes name it.
fn value(name: &str, version: u32, size: usize) -> Vec<u8> {
    let mut bytes = format!("{name:<16}v{version:<7}").into_bytes();
    let mut x: u64 = (name.len() as u64) << 32 | version as u64;
    for b in name.bytes() {
        x = x.wrapping_mul(31).wrapping_add(b as u64);
    }
    while bytes.len() < size {
        // xorshift: values differ everywhere, not only in their heads.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(b'a' + (x % 26) as u8);
    }
    bytes.truncate(size);
    bytes
}

fn config_name(task: usize, file: usize) -> String {
    format!("t{task}f{file}")
}

async fn create_configs(client: &AdminClient<tonic::transport::Channel>, tasks: usize, files: usize, size: usize) {
    let mut jobs = Vec::new();
    for writer in 0..8 {
        let mut client = client.clone();
        jobs.push(tokio::spawn(async move {
            for task in (writer..tasks).step_by(8) {
                for file in 0..files {
                    let name = config_name(task, file);
                    let data = value(&name, 1, size);
                    let request =
                        pb::CreateRequest { kind: pb::Kind::Config as i32, name, labels: Default::default(), data };
                    client.create(request).await.expect("config created");
                }
            }
        }));
    }
    for job in jobs {
        job.await.expect("writer");
    }
}

/// Creates `count` secrets of 1 KiB with 8 writers; returns creates per second.
async fn create_small(client: &AdminClient<tonic::transport::Channel>, count: usize) -> f64 {
    let start = Instant::now();
    let mut jobs = Vec::new();
    for writer in 0..8 {
        let mut client = client.clone();
        jobs.push(tokio::spawn(async move {
            for i in (writer..count).step_by(8) {
                let (name, data) = (format!("small-{i}"), vec![b's'; 1024]);
                let request =
                    pb::CreateRequest { kind: pb::Kind::Secret as i32, name, labels: Default::default(), data };
                client.create(request).await.expect("secret created");
            }
        }));
    }
    for job in jobs {
        job.await.expect("writer");
    }
    count as f64 / start.elapsed().as_secs_f64()
}

async fn rotate_first_configs(client: &AdminClient<tonic::transport::Channel>, tasks: usize, size: usize) {
    let mut jobs = Vec::new();
    for writer in 0..8 {
        let mut client = client.clone();
        jobs.push(tokio::spawn(async move {
            for task in (writer..tasks).step_by(8) {
                let name = config_name(task, 0);
                let data = value(&name, 2, size);
                let request =
                    pb::RotateRequest { kind: pb::Kind::Config as i32, reference: name, data, ..Default::default() };
                client.rotate(request).await.expect("config rotated");
            }
        }));
    }
    for job in jobs {
        job.await.expect("writer");
    }
}

/// What a task prints when it has every file whole: each file's head, then the total bytes.
fn expected(task: usize, files: usize, size: usize, first_version: u32) -> String {
    let mut heads = String::new();
    for file in 0..files {
        let version = if file == 0 { first_version } else { 1 };
        heads.push_str(&String::from_utf8_lossy(&value(&config_name(task, file), version, 24)));
    }
    format!("{heads} {}", files * size)
}

/// Streams opened and never read, besides the agent's.
const STALLED: usize = 3;

/// The node's certificate as a `TlsBundle` directory.
fn node_bundle(agent: &TestAgent) -> TlsBundle {
    let bundle = agent.dir.path().join("node-bundle-for-bench");
    std::fs::create_dir_all(&bundle).expect("bundle dir");
    for (from, to) in [("ca.pem", "ca.pem"), ("node.pem", "cert.pem"), ("node.key", "key.pem")] {
        std::fs::copy(agent.state_dir().join(from), bundle.join(to)).expect("node file");
    }
    TlsBundle::read(&bundle).expect("bundle")
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (tasks, files, size) =
        (knob("HUSH_BENCH_TASKS", 100), knob("HUSH_BENCH_FILES", 10), knob("HUSH_BENCH_SIZE", SIZE));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    let pids = [vault.pid(), agent.pid()];
    let bundle = TlsBundle::read(&vault.admin_dir()).expect("bundle");
    let client =
        runtime.block_on(async { AdminClient::new(connect_channel(&vault.addr, &bundle).await.expect("connect")) });
    let client = client.max_decoding_message_size(8 << 20).max_encoding_message_size(8 << 20);
    std::thread::sleep(Duration::from_millis(500));
    let idle = [rss_kib(pids[0]), rss_kib(pids[1])];

    let small_rate = runtime.block_on(create_small(&client, 1000));
    let started = Instant::now();
    let sampler = Sampler::start(&pids);
    runtime.block_on(create_configs(&client, tasks, files, size));
    let create_peak = sampler.stop();
    let create_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let stored = [rss_kib(pids[0]), rss_kib(pids[1])];
    for task in 0..tasks {
        let mut args = vec!["service".to_string(), "create".into(), format!("svc-{task}")];
        for file in 0..files {
            args.push("--config".into());
            args.push(format!("source={},target=/c{file}", config_name(task, file)));
        }
        vault.hush(&args.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    }
    let before_tasks = [rss_kib(pids[0]), rss_kib(pids[1])];

    // Every task reads every file whole through the mount: heads, then the total byte count.
    let paths: Vec<String> = (0..files).map(|f| format!("/c{f}")).collect();
    let step = format!(
        "for f in {}; do head -c 24 $f; done; printf ' %s' \"$(cat {} | wc -c)\"",
        paths.join(" "),
        paths.join(" ")
    );
    let sampler = Sampler::start(&pids);
    let start = Instant::now();
    // One after another: started all at once, the first tasks wait for their files longer than
    // the agent's 15 s start timeout while about 1 GB goes down the stream (seen here).
    let mut sessions: Vec<TaskSession> = Vec::new();
    for task in 0..tasks {
        let mut session = agent.session(&vault, &format!("svc-{task}"), &step);
        let answer = session.ask();
        if answer != expected(task, files, size, 1) {
            let tail = |text: String| text.lines().rev().take(8).collect::<Vec<_>>().join("\n");
            panic!(
                "task {task} answered {answer:?}\nagent log:\n{}\nvault log:\n{}",
                tail(agent.log_text()),
                tail(vault.log_text())
            );
        }
        sessions.push(session);
    }
    let delivered = start.elapsed();
    let deliver_peak = sampler.stop();
    let serving = [rss_kib(pids[0]), rss_kib(pids[1])];
    // What checking every task once costs (each reads all its files): the resolution of the
    // rotation's "all seen", which checks every task at least once after the calls.
    let start = Instant::now();
    for (task, session) in sessions.iter_mut().enumerate() {
        let answer = session.ask();
        if answer != expected(task, files, size, 1) {
            let tail = |text: String| text.lines().rev().take(30).collect::<Vec<_>>().join("\n");
            panic!(
                "task {task} answered {answer:?} on a second check\nagent log:\n{}\nvault log:\n{}",
                tail(agent.log_text()),
                tail(vault.log_text())
            );
        }
    }
    let one_pass = start.elapsed();

    let sampler = Sampler::start(&pids);
    let start = Instant::now();
    runtime.block_on(rotate_first_configs(&client, tasks, size));
    let rotate_calls = start.elapsed();
    for (task, session) in sessions.iter_mut().enumerate() {
        let want = expected(task, files, size, 2);
        hush_tests::wait_for("a rotation in every task", || (session.ask() == want).then_some(()));
    }
    let rotated = start.elapsed();
    let rotate_peak = sampler.stop();
    let after_rotation = [rss_kib(pids[0]), rss_kib(pids[1])];

    // What one node can make the vault spend: streams it opens and never reads, each owed every
    // value (the agent holds the 4th place per node).
    let stalled = runtime.block_on(async {
        let channel = connect_channel(&vault.addr, &node_bundle(&agent)).await.expect("node channel");
        let mut node = hush_proto::v1::node_client::NodeClient::new(channel);
        let mut open = Vec::new();
        for _ in 0..STALLED {
            open.push(node.assignments(pb::AssignmentsRequest::default()).await.expect("stream"));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = rss_kib(pids[0]);
        let refused = node.assignments(pb::AssignmentsRequest::default()).await.is_err();
        (rss, refused)
    });
    for session in sessions {
        assert!(session.finish().success());
    }
    let log = agent.log_text();
    assert!(!log.contains("decoded message length too large"), "the agent hit the decode limit");

    let payload_mib = (tasks * files * size) as f64 / 1048576.0;
    println!();
    println!("{tasks} tasks x {files} configs of {size} bytes, all distinct: {payload_mib:.0} MiB for one node");
    println!("{:<48} {:>12} {:>12}", "memory (MiB)", "vault", "agent");
    let row = |label: &str, v: [u64; 2]| println!("{label:<48} {:>12} {:>12}", mib(v[0]), mib(v[1]));
    row("idle, no configs (baseline)", idle);
    row("peak while the configs are created", [create_peak[0], create_peak[1]]);
    row("configs stored (agent: holding them for services)", stored);
    row("configs and services stored, no task", before_tasks);
    row("peak while every task starts and reads all", [deliver_peak[0], deliver_peak[1]]);
    row("serving every task", serving);
    row("peak during the rotation", [rotate_peak[0], rotate_peak[1]]);
    row("after the rotation", after_rotation);
    println!(
        "{:<48} {:>12} {:>11.2}x",
        "growth serving vs idle, per MiB of payload",
        format!("{:.2}x", (serving[0] - idle[0].min(serving[0])) as f64 / 1024.0 / payload_mib),
        (serving[1] - idle[1].min(serving[1])) as f64 / 1024.0 / payload_mib
    );
    println!(
        "{:<48} {:>12}",
        format!("vault: {STALLED} stalled streams of the node (5th refused: {})", stalled.1),
        mib(stalled.0)
    );
    println!(
        "{:<48} {:>12}",
        "vault growth per stalled stream",
        mib(stalled.0.saturating_sub(after_rotation[0]) / STALLED as u64)
    );
    println!("{:<48} {:>12.1}", "seconds to create the configs", create_time.as_secs_f64());
    let large_rate = (tasks * files) as f64 / create_time.as_secs_f64();
    println!("{:<48} {:>12.0}", "creates/s of 1 KiB secrets (8 writers, baseline)", small_rate);
    println!(
        "{:<48} {:>12.1} {:>11.3}x",
        format!("creates/s of {size}-byte configs (8 writers)"),
        large_rate,
        large_rate / small_rate
    );
    println!("{:<48} {:>12.1}", "seconds from the first hush run to all read", delivered.as_secs_f64());
    println!(
        "{:<48} {:>12.1}",
        format!("seconds to rotate {tasks} configs (calls / all seen)"),
        rotate_calls.as_secs_f64()
    );
    println!("{:<48} {:>12.1}", "", rotated.as_secs_f64());
    println!("{:<48} {:>12.1}", "seconds to check every task once (baseline)", one_pass.as_secs_f64());
    println!(
        "{:<48} {:>12.1}",
        "rotation: all seen after the last call returned",
        rotated.saturating_sub(rotate_calls).as_secs_f64()
    );
}
