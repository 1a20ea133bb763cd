//! Agent benchmark, end to end: a real vault, a real agent and a task started by `hush run`.
//!
//! Run: `cargo build --release --bins && cargo bench -p hush-tests --bench agent` (root, /dev/fuse).
//!
//! - **Reads**: open + read + close of a 1 KiB secret at `/run/secrets/x` inside the task, against the
//!   same bytes on a tmpfs mounted inside the same task; short rounds interleaved, best round of each
//!   (on a shared machine, long rounds measure the neighbours more than the filesystem).
//! - **Rotation**: from the moment the rotate RPC returns to the caller (the version is committed) to
//!   the first read in the task that sees the new value, over 100 rotations. The task polls in a tight
//!   open + read + close loop; both sides stamp the wall clock (one machine, one clock). The agent can
//!   be faster than the RPC's answer, so a latency may be negative.
//!
//! The task is this binary again (selected by [`TASK_ENV`]), reading commands from stdin, so the loop
//! inside the task costs what a real reader's would: no shell, no process per read.
//! Figures are printed, never asserted.

use std::fs::File;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use hush_tests::{TestAgent, TestVault};
use hush_vault::client::{TlsBundle, connect_channel};

/// Set (to the directory to mount the task's tmpfs on) when this binary runs as the task.
const TASK_ENV: &str = "HUSH_BENCH_AGENT_TASK";
const SIZE: usize = 1024;
const ROUND: Duration = Duration::from_millis(50);
const ROUNDS: u32 = 40;
const ROTATIONS: usize = 100;
const SECRET: &str = "/run/secrets/x";

fn main() {
    if let Ok(dir) = std::env::var(TASK_ENV) {
        return task(Path::new(&dir));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    vault.hush_stdin(&["secret", "create", "x", "-"], &value("v0000-")).ok();
    vault.hush(&["service", "create", "bench", "--secret", "x"]).ok();

    let tmpfs_dir = tempfile::tempdir().expect("temp dir");
    let mut child = vault
        .command()
        .env("HUSH_AGENT_SOCKET", agent.socket())
        .env(TASK_ENV, tmpfs_dir.path())
        .args(["run", "--service", "bench", "--"])
        .arg(std::env::current_exe().expect("own path"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("hush run spawns");
    let mut task = Task {
        stdin: child.stdin.take().expect("piped"),
        stdout: BufReader::new(child.stdout.take().expect("piped")).lines(),
    };
    let tmpfs_file = task.expect("task ready ");

    // Reads: interleaved rounds of both paths, best round of each.
    let mut best = [0f64; 2];
    let paths = [SECRET, tmpfs_file.as_str()];
    for round in 0..=ROUNDS {
        for (i, path) in paths.iter().enumerate() {
            let said = task.ask(&format!("ops {path} {}", ROUND.as_millis()), "ops ");
            let (ops, nanos) = said.split_once(' ').expect("ops COUNT NANOS");
            let rate = ops.parse::<f64>().unwrap() / (nanos.parse::<f64>().unwrap() / 1e9);
            // Round 0 warms up.
            if round > 0 {
                best[i] = best[i].max(rate);
            }
        }
    }

    // Rotation: poll in the task, rotate through the API, compare the stamps.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bundle = TlsBundle::read(&vault.admin_dir()).expect("admin bundle");
    let mut client = AdminClient::new(runtime.block_on(connect_channel(&vault.addr, &bundle)).expect("connect"));
    let mut latencies = Vec::with_capacity(ROTATIONS);
    // Also from the moment the call is made: an upper bound that cannot go negative.
    let mut from_call = Vec::with_capacity(ROTATIONS);
    for i in 1..=ROTATIONS {
        let prefix = format!("v{i:04}-");
        task.ask(&format!("poll {SECRET} {prefix}"), "polling");
        let request = pb::RotateRequest {
            kind: pb::Kind::Secret as i32,
            reference: "x".into(),
            data: value(&prefix),
            ..Default::default()
        };
        let sent = wall_nanos();
        runtime.block_on(client.rotate(request)).expect("rotate");
        let returned = wall_nanos();
        let seen: i128 = task.expect("seen ").parse().expect("nanos");
        latencies.push(seen - returned);
        from_call.push(seen - sent);
    }
    latencies.sort();
    from_call.sort();

    drop(task);
    let status = child.wait().expect("task exits");
    assert!(status.success(), "task failed: {status}");

    let ms = |nanos: i128| format!("{:.2} ms", nanos as f64 / 1e6);
    let rank = |v: &[i128], q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    println!();
    println!("agent: vault + agent on loopback, one task started by `hush run`, {SIZE}-byte secret");
    println!("{:<58} {:>14}", "measure", "value");
    println!("{:<58} {:>14.0}", format!("open+read+close/s, {SECRET} (FUSE)"), best[0]);
    println!("{:<58} {:>14.0}", "open+read+close/s, tmpfs in the same task", best[1]);
    println!("{:<58} {:>13.1}x", "  FUSE slower than tmpfs by", best[1] / best[0]);
    for (what, v) in [("rotate RPC return", &latencies), ("rotate RPC call", &from_call)] {
        let median = ms(rank(v, 0.5));
        println!("{:<58} {:>14}", format!("{what} -> new value read in task, median ({ROTATIONS})"), median);
        println!("{:<58} {:>14}", "  p99", ms(rank(v, 0.99)));
        println!("{:<58} {:>14}", "  min / max", format!("{} / {}", ms(v[0]), ms(v[v.len() - 1])));
    }
}

/// A 1 KiB value starting with `prefix`.
fn value(prefix: &str) -> Vec<u8> {
    let mut v = prefix.as_bytes().to_vec();
    v.resize(SIZE, b'.');
    v
}

fn wall_nanos() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i128
}

/// The bench's side of the task's stdin and stdout.
struct Task {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Task {
    /// The rest of the next line, which must start with `prefix`.
    fn expect(&mut self, prefix: &str) -> String {
        let line = self.stdout.next().unwrap_or_else(|| panic!("task ended before {prefix:?}")).expect("task output");
        line.strip_prefix(prefix).unwrap_or_else(|| panic!("task said {line:?}, expected {prefix:?}")).to_string()
    }

    fn ask(&mut self, command: &str, prefix: &str) -> String {
        writeln!(self.stdin, "{command}").expect("task stdin");
        self.expect(prefix)
    }
}

/// One open, one read of up to 4 KiB, one close; the bytes read.
fn open_read_close(path: &Path, buf: &mut [u8; 4096]) -> usize {
    black_box(File::open(path).and_then(|mut f| f.read(buf)).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The task side: mounts a tmpfs on `dir` (in the task's namespace only) with a copy of the secret,
/// then answers commands until stdin closes.
fn task(dir: &Path) {
    rustix::mount::mount("tmpfs", dir, "tmpfs", rustix::mount::MountFlags::empty(), c"size=64k")
        .expect("mount a tmpfs in the task");
    let copy: PathBuf = dir.join("x");
    std::fs::write(&copy, std::fs::read(SECRET).expect("read the secret")).expect("write the tmpfs copy");
    let mut out = std::io::stdout().lock();
    writeln!(out, "task ready {}", copy.display()).unwrap();
    out.flush().unwrap();
    let mut buf = [0u8; 4096];
    for line in std::io::stdin().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["ops", path, millis] => {
                let (path, length) = (Path::new(path), Duration::from_millis(millis.parse().expect("millis")));
                let start = Instant::now();
                let mut ops = 0u64;
                while start.elapsed() < length {
                    for _ in 0..50 {
                        open_read_close(path, &mut buf);
                    }
                    ops += 50;
                }
                writeln!(out, "ops {ops} {}", start.elapsed().as_nanos()).unwrap();
            }
            ["poll", path, prefix] => {
                writeln!(out, "polling").unwrap();
                out.flush().unwrap();
                let path = Path::new(path);
                loop {
                    let n = open_read_close(path, &mut buf);
                    if buf[..n].starts_with(prefix.as_bytes()) {
                        break;
                    }
                }
                writeln!(out, "seen {}", wall_nanos()).unwrap();
            }
            other => panic!("bad command {other:?}"),
        }
        out.flush().unwrap();
    }
}
