//! Agent benchmark, end to end: a real vault, a real agent and a task started by `hush run`.
//!
//! Run: `cargo build --release --bins && cargo bench -p hush-tests --bench agent` (root, /dev/fuse).
//! One run on 2 shared cores (2026-12-01, debug build of hush's crates, dependencies optimised, as
//! the disk had no room for a release build): 1 reader 43.4k/s vs tmpfs 305k/s = 7.0x (median
//! 6.5x); 4 readers 7.4x; 16 readers 6.6x; p99 60 us (1 reader); 1.0 audit entry/s for a loop of
//! 31.7k opens/s; 1 MB config 6.2 GB/s vs 15.7 GB/s (2.5x); agent RSS 55.8 MB idle, 75.2 MB
//! serving the task.
//!
//! - **Reads**: open + read + close of a 1 KiB secret at `/run/secrets/x` inside the task, by 1, 4 and
//!   16 concurrent reader threads, against the same bytes on a tmpfs mounted inside the same task;
//!   short rounds interleaved, best and median round of each (on a shared machine, long rounds
//!   measure the neighbours more than the filesystem); p99 latency of one open+read+close (every
//!   16th op timed). Auditing is on (the agent's default).
//! - **Audit volume**: entries the vault recorded for the task during a 1-reader loop, per second,
//!   against the opens made (folding in the agent: one entry per process, file and second).
//! - **Large file**: a 1,000,000-byte config at `/big.conf` read whole, bytes/s against tmpfs.
//! - **Agent memory**: the agent's RSS idle (no task) and while serving the task.
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
const ROUNDS: u32 = 20;
const READERS: [usize; 3] = [1, 4, 16];
const BIG: usize = 1_000_000;
const BIG_FILE: &str = "/big.conf";
const ROTATIONS: usize = 100;
const SECRET: &str = "/run/secrets/x";

fn main() {
    if let Ok(dir) = std::env::var(TASK_ENV) {
        return task(Path::new(&dir));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    let idle_rss = rss_of_agent(&agent.socket());
    vault.hush_stdin(&["secret", "create", "x", "-"], &value("v0000-")).ok();
    vault.hush_stdin(&["config", "create", "big", "-"], &vec![b'b'; BIG]).ok();
    vault
        .hush(&["service", "create", "bench", "--secret", "x", "--config", &format!("source=big,target={BIG_FILE}")])
        .ok();

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
    let ready = task.expect("task ready ");
    let (tmpfs_file, tmpfs_big) =
        ready.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).expect("two paths");

    let task_rss = rss_of_agent(&agent.socket());
    let task_id = task.ask("id", "id ");

    // Reads: for each reader count, interleaved rounds of both paths; best and median of each.
    let paths = [SECRET, tmpfs_file.as_str()];
    let mut reads = Vec::new();
    for readers in READERS {
        let mut rates = [Vec::new(), Vec::new()];
        let mut p99 = Vec::new();
        for round in 0..=ROUNDS {
            for (i, path) in paths.iter().enumerate() {
                let said = task.ask(&format!("ops {path} {} {readers}", ROUND.as_millis()), "ops ");
                let f: Vec<f64> = said.split(' ').map(|w| w.parse().expect("number")).collect();
                // Round 0 warms up.
                if round > 0 {
                    rates[i].push(f[0] / (f[1] / 1e9));
                    if i == 0 {
                        p99.push(f[2]);
                    }
                }
            }
        }
        reads.push((readers, stats(&mut rates[0]), stats(&mut rates[1]), stats(&mut p99).1));
    }

    // Audit volume of a 1-reader loop: entries recorded for this task, per second of looping.
    let entries_now = || audit_entries(&vault, &task_id);
    let before = entries_now();
    let said = task.ask(&format!("ops {SECRET} 3000 1"), "ops ");
    let f: Vec<f64> = said.split(' ').map(|w| w.parse().expect("number")).collect();
    let (loop_ops, loop_secs) = (f[0], f[1] / 1e9);
    // Entries leave the agent when their 1 s window closes.
    std::thread::sleep(Duration::from_millis(2500));
    let audit_per_sec = (entries_now() - before) as f64 / loop_secs;

    // Large file: whole reads of 1 MB, interleaved with tmpfs.
    let big_paths = [BIG_FILE.to_string(), tmpfs_big.clone()];
    let mut big = [Vec::new(), Vec::new()];
    for round in 0..=ROUNDS / 2 {
        for (i, path) in big_paths.iter().enumerate() {
            let said = task.ask(&format!("big {path} {}", ROUND.as_millis() * 2), "big ");
            let (bytes, nanos) = said.split_once(' ').expect("big BYTES NANOS");
            if round > 0 {
                big[i].push(bytes.parse::<f64>().unwrap() / (nanos.parse::<f64>().unwrap() / 1e9));
            }
        }
    }
    let (big_fuse, big_tmpfs) = (stats(&mut big[0]), stats(&mut big[1]));

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
    println!("(auditing on; best / median of {ROUNDS} interleaved rounds of {} ms)", ROUND.as_millis());
    for (readers, fuse, tmpfs, p99) in &reads {
        println!("{:<58} {:>14}", format!("open+read+close/s, {readers} reader(s), {SECRET}"), pair(*fuse));
        println!("{:<58} {:>14}", format!("open+read+close/s, {readers} reader(s), tmpfs"), pair(*tmpfs));
        println!(
            "{:<58} {:>14}",
            "  FUSE slower than tmpfs by (best / median)",
            format!("{:.1}x / {:.1}x", tmpfs.0 / fuse.0, tmpfs.1 / fuse.1)
        );
        println!("{:<58} {:>14}", "  p99 open+read+close latency, FUSE (median round)", format!("{:.1} us", p99 / 1e3));
    }
    println!("{:<58} {:>14.0}", "1-reader loop: opens/s", loop_ops / loop_secs);
    println!("{:<58} {:>14.1}", "1-reader loop: audit entries written/s", audit_per_sec);
    println!("{:<58} {:>14}", format!("{BIG}-byte config read whole, MB/s, FUSE"), mb(big_fuse));
    println!("{:<58} {:>14}", format!("{BIG}-byte file read whole, MB/s, tmpfs"), mb(big_tmpfs));
    println!("{:<58} {:>13.1}x", "  FUSE slower than tmpfs by (best)", big_tmpfs.0 / big_fuse.0);
    println!("{:<58} {:>14}", "agent RSS idle / serving the task", format!("{idle_rss} / {task_rss} KiB"));
    for (what, v) in [("rotate RPC return", &latencies), ("rotate RPC call", &from_call)] {
        let median = ms(rank(v, 0.5));
        println!("{:<58} {:>14}", format!("{what} -> new value read in task, median ({ROTATIONS})"), median);
        println!("{:<58} {:>14}", "  p99", ms(rank(v, 0.99)));
        println!("{:<58} {:>14}", "  min / max", format!("{} / {}", ms(v[0]), ms(v[v.len() - 1])));
    }
}

/// (best, median) of `v`.
fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() - 1], v[v.len() / 2])
}

fn pair((best, median): (f64, f64)) -> String {
    format!("{best:.0} / {median:.0}")
}

fn mb((best, median): (f64, f64)) -> String {
    format!("{:.0} / {:.0}", best / 1e6, median / 1e6)
}

/// Audit entries the vault holds for task `task_id`.
fn audit_entries(vault: &TestVault, task_id: &str) -> usize {
    let run = vault.hush(&["audit", "--task", task_id, "--format", "json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(run.ok()).expect("audit JSON");
    entries.len()
}

/// VmRSS (KiB) of the agent serving `socket` (found by its command line).
fn rss_of_agent(socket: &Path) -> u64 {
    let socket = socket.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let dir = entry.expect("entry").path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !args.iter().any(|a| a.ends_with(b"hush-agent")) || !args.iter().any(|a| *a == socket.as_bytes()) {
            continue;
        }
        if args.iter().any(|a| *a == b"run") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        if let Some(kib) = status.lines().find_map(|l| l.strip_prefix("VmRSS:")) {
            return kib.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
        }
    }
    0
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
    rustix::mount::mount("tmpfs", dir, "tmpfs", rustix::mount::MountFlags::empty(), c"size=4m")
        .expect("mount a tmpfs in the task");
    let copy: PathBuf = dir.join("x");
    std::fs::write(&copy, std::fs::read(SECRET).expect("read the secret")).expect("write the tmpfs copy");
    let big_copy: PathBuf = dir.join("big");
    std::fs::write(&big_copy, std::fs::read(BIG_FILE).expect("read the config")).expect("write the tmpfs copy");
    let mut out = std::io::stdout().lock();
    writeln!(out, "task ready {} {}", copy.display(), big_copy.display()).unwrap();
    out.flush().unwrap();
    let mut buf = [0u8; 4096];
    for line in std::io::stdin().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["id"] => writeln!(out, "id {}", std::env::var("HUSH_TASK_ID").expect("task id")).unwrap(),
            ["ops", path, millis, readers] => {
                let length = Duration::from_millis(millis.parse().expect("millis"));
                let readers: usize = readers.parse().expect("readers");
                let start = Instant::now();
                let threads: Vec<_> = (0..readers)
                    .map(|_| {
                        let path = PathBuf::from(path);
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            let (mut ops, mut timed) = (0u64, Vec::new());
                            while start.elapsed() < length {
                                for i in 0..48 {
                                    if i % 16 == 0 {
                                        let t = Instant::now();
                                        open_read_close(&path, &mut buf);
                                        timed.push(t.elapsed().as_nanos() as u64);
                                    } else {
                                        open_read_close(&path, &mut buf);
                                    }
                                }
                                ops += 48;
                            }
                            (ops, timed)
                        })
                    })
                    .collect();
                let (mut ops, mut timed) = (0u64, Vec::new());
                for t in threads {
                    let (n, mut v) = t.join().expect("reader");
                    ops += n;
                    timed.append(&mut v);
                }
                let elapsed = start.elapsed().as_nanos();
                timed.sort_unstable();
                let p99 = timed[(timed.len() * 99 / 100).min(timed.len() - 1)];
                writeln!(out, "ops {ops} {elapsed} {p99}").unwrap();
            }
            ["big", path, millis] => {
                let length = Duration::from_millis(millis.parse().expect("millis"));
                let mut whole = vec![0u8; BIG + 4096];
                let start = Instant::now();
                let mut bytes = 0u64;
                while start.elapsed() < length {
                    let mut f = File::open(path).expect("open");
                    let mut n = 0;
                    loop {
                        let got = f.read(&mut whole[n..]).expect("read");
                        if got == 0 {
                            break;
                        }
                        n += got;
                    }
                    assert_eq!(n, BIG);
                    bytes += n as u64;
                }
                writeln!(out, "big {bytes} {}", start.elapsed().as_nanos()).unwrap();
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
