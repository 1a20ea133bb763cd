//! Agent benchmark, end to end: a real vault, real agents and tasks started by `hush run`.
//!
//! Run (root, /dev/fuse): `cargo build --release --bins && cargo bench -p hush-tests --bench agent`
//! for release binaries, or `cargo build --bins && cargo bench --profile dev -p hush-tests --bench
//! agent` for debug ones (the bench uses the binaries of its own profile). Figures of runs on this
//! machine kind are in the closing notes of issue 10 and in `docs/SEMANTICS.md`.
//!
//! - **Reads**: open + read + close of a 1 KiB secret at `/run/secrets/x` inside a task, by 1, 4
//!   and 16 concurrent reader threads, against the same bytes on a tmpfs mounted inside the same
//!   task. One agent per setup runs at once (`--fuse-threads` 1, 2 and 4 with auditing on, and the
//!   default thread count with `--no-open-audit`), each with its own task; short rounds of every
//!   setup and of tmpfs are interleaved, best and median round of each (on a shared machine, long
//!   rounds measure the neighbours more than the filesystem); p99 latency of one open+read+close
//!   (every 16th op timed).
//! - **Audit volume**: entries the vault recorded for the task during a 1-reader loop, per second,
//!   against the opens made (folding in the agent: one entry per process, file and second).
//! - **Large file**: a 1,000,000-byte config at `/big.conf` read whole, bytes/s against tmpfs.
//! - **Agent memory**: VmRSS and VmLck of an agent of its own vault: idle, then serving a service
//!   of 1,000 secrets of 1 KiB, then one of 10,000 (the service directory every node that may
//!   run a service serves holds them all), and of the default agent serving the task.
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
/// `--fuse-threads` values measured (2 cores here: 4 is already twice the CPUs).
const THREADS: [usize; 3] = [1, 2, 4];
const BIG: usize = 1_000_000;
const BIG_FILE: &str = "/big.conf";
const ROTATIONS: usize = 100;
const SECRET: &str = "/run/secrets/x";

/// One agent setup whose reads are measured: a label and its extra `hush-agent` flags.
struct Setup {
    label: String,
    flags: Vec<String>,
}

/// A setup's agent and the task reading through it.
struct Reader {
    setup: Setup,
    agent: TestAgent,
    child: std::process::Child,
    task: Task,
    tmpfs_file: String,
    tmpfs_big: String,
    /// The task mounts its tmpfs here: removing it would unmount it in the task too.
    _tmpfs_dir: tempfile::TempDir,
}

impl Reader {
    fn start(vault: &TestVault, setup: Setup) -> Self {
        let flags: Vec<&str> = setup.flags.iter().map(String::as_str).collect();
        let agent = TestAgent::join_with(vault, &flags);
        let tmpfs_dir = tempfile::tempdir().expect("temp dir");
        let mut child = vault
            .command()
            .env("HUSH_AGENT_SOCKET", agent.socket())
            .env(TASK_ENV, tmpfs_dir.path())
            // SYS_ADMIN to mount the tmpfs it compares with (a task has Docker's default capabilities).
            .args(["run", "--cap-add", "SYS_ADMIN", "--service", "bench", "--"])
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
        Reader { setup, agent, child, task, tmpfs_file, tmpfs_big, _tmpfs_dir: tmpfs_dir }
    }

    /// One round of `readers` readers on `path`: (ops/s, p99 latency in ns).
    fn round(&mut self, path: &str, readers: usize) -> (f64, f64) {
        let said = self.task.ask(&format!("ops {path} {} {readers}", ROUND.as_millis()), "ops ");
        let f: Vec<f64> = said.split(' ').map(|w| w.parse().expect("number")).collect();
        (f[0] / (f[1] / 1e9), f[2])
    }

    fn finish(self) {
        let Reader { mut child, task, agent, .. } = self;
        drop(task);
        let status = child.wait().expect("task exits");
        assert!(status.success(), "task failed: {status}");
        drop(agent);
    }
}

/// The agent's default `--fuse-threads`, as its `--help` says.
fn default_threads() -> String {
    let help = std::process::Command::new(hush_tests::bin("hush-agent")).arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let at = help.find("--fuse-threads").expect("--fuse-threads in --help");
    let rest = &help[at..];
    let value = rest.split("[default: ").nth(1).expect("a default");
    value[..value.find(']').expect("]")].to_string()
}

/// Measures the agent's memory on a vault of its own: idle, then with services of 1,000 and of
/// 10,000 secrets of 1 KiB. Returns (what, VmRSS KiB, VmLck KiB) rows.
fn memory(runtime: &tokio::runtime::Runtime) -> Vec<(String, u64, u64)> {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    let mut rows = Vec::new();
    std::thread::sleep(Duration::from_millis(500));
    let (rss, lck) = memory_of(agent.pid());
    rows.push(("agent idle (no task, no service)".to_string(), rss, lck));
    let bundle = TlsBundle::read(&vault.admin_dir()).expect("admin bundle");
    let mut client = AdminClient::new(runtime.block_on(connect_channel(&vault.addr, &bundle)).expect("connect"));
    let mut created = 0;
    for (n, service) in [(1_000usize, "mem1k"), (10_000, "mem10k")] {
        let started = Instant::now();
        runtime.block_on(async {
            // A few calls in flight: the store commits them one by one anyway.
            let mut pending = futures::stream::FuturesUnordered::new();
            use futures::StreamExt;
            for i in created..n {
                let mut client = client.clone();
                pending.push(async move {
                    let request = pb::CreateRequest {
                        kind: pb::Kind::Secret as i32,
                        name: format!("m{i:05}"),
                        data: value(&format!("m{i:05}-")),
                        ..Default::default()
                    };
                    client.create(request).await.expect("create")
                });
                if pending.len() >= 16 {
                    pending.next().await;
                }
            }
            while pending.next().await.is_some() {}
        });
        let create_secs = started.elapsed().as_secs_f64();
        created = n;
        let request = pb::ServiceCreateRequest {
            name: service.into(),
            secrets: (0..n).map(|i| format!("m{i:05}")).collect(),
            ..Default::default()
        };
        runtime.block_on(client.service_create(request)).expect("service create");
        // Only its containers may list a service directory; anyone may look a name up.
        let dir = agent.mount_root().join("services").join(service).join("run/secrets");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !(0..n).all(|i| dir.join(format!("m{i:05}")).exists()) {
            assert!(Instant::now() < deadline, "the agent never served {n} secrets");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The previous service goes: the agent then holds this one's values only.
        if n > 1_000 {
            vault.hush(&["service", "rm", "mem1k"]).ok();
            let gone = agent.mount_root().join("services/mem1k");
            while gone.exists() {
                assert!(Instant::now() < deadline, "mem1k never went");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let (rss, lck) = memory_of(agent.pid());
        rows.push((format!("agent serving {n} secrets of {SIZE} B (created in {create_secs:.0} s)"), rss, lck));
    }
    rows
}

fn main() {
    if let Ok(dir) = std::env::var(TASK_ENV) {
        return task(Path::new(&dir));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let profile = if hush_tests::bin("hush").to_string_lossy().contains("/release/") { "release" } else { "debug" };
    let memory_rows = memory(&runtime);

    let vault = TestVault::start_new();
    vault.hush_stdin(&["secret", "create", "x", "-"], &value("v0000-")).ok();
    vault.hush_stdin(&["config", "create", "big", "-"], &vec![b'b'; BIG]).ok();
    vault
        .hush(&["service", "create", "bench", "--secret", "x", "--config", &format!("source=big,target={BIG_FILE}")])
        .ok();
    let default = default_threads();
    let mut setups: Vec<Setup> = THREADS
        .iter()
        .map(|t| Setup {
            label: format!("{t} FUSE thread(s){}", if t.to_string() == default { " (default)" } else { "" }),
            flags: vec!["--fuse-threads".into(), t.to_string()],
        })
        .collect();
    setups.push(Setup {
        label: format!("{default} FUSE threads, --no-open-audit"),
        flags: vec!["--no-open-audit".into()],
    });
    let mut readers: Vec<Reader> = setups.into_iter().map(|s| Reader::start(&vault, s)).collect();
    // The default setup with auditing on measures everything else.
    let main = readers.iter().position(|r| r.setup.flags == ["--fuse-threads", default.as_str()]).expect("default");
    let task_rss = memory_of(readers[main].agent.pid());
    let task_id = readers[main].task.ask("id", "id ");

    // Reads: for each reader count, interleaved rounds of every setup and of tmpfs (read in the
    // default setup's task); best and median of each.
    // reads[readers][setup] = (rates, p99s); the last "setup" is tmpfs.
    let mut reads = Vec::new();
    for n in READERS {
        let mut rates = vec![Vec::new(); readers.len() + 1];
        let mut p99 = vec![Vec::new(); readers.len() + 1];
        for round in 0..=ROUNDS {
            for i in 0..=readers.len() {
                // Start each round one further along: whatever runs first after a pause pays more.
                let i = (i + round as usize) % (readers.len() + 1);
                let (rate, p) = if i == readers.len() {
                    let path = readers[main].tmpfs_file.clone();
                    readers[main].round(&path, n)
                } else {
                    readers[i].round(SECRET, n)
                };
                // Round 0 warms up.
                if round > 0 {
                    rates[i].push(rate);
                    p99[i].push(p);
                }
            }
        }
        let rows: Vec<_> = rates.iter_mut().zip(p99.iter_mut()).map(|(r, p)| (stats(r), stats(p).1)).collect();
        reads.push((n, rows));
    }

    // Audit volume of a 1-reader loop: entries recorded for this task, per second of looping.
    let entries_now = || audit_entries(&vault, &task_id);
    let before = entries_now();
    let said = readers[main].task.ask(&format!("ops {SECRET} 3000 1"), "ops ");
    let f: Vec<f64> = said.split(' ').map(|w| w.parse().expect("number")).collect();
    let (loop_ops, loop_secs) = (f[0], f[1] / 1e9);
    // Entries leave the agent when their 1 s window closes.
    std::thread::sleep(Duration::from_millis(2500));
    let audit_per_sec = (entries_now() - before) as f64 / loop_secs;

    // Large file: whole reads of 1 MB, interleaved with tmpfs.
    let big_paths = [BIG_FILE.to_string(), readers[main].tmpfs_big.clone()];
    let mut big = [Vec::new(), Vec::new()];
    for round in 0..=ROUNDS / 2 {
        for (i, path) in big_paths.iter().enumerate() {
            let said = readers[main].task.ask(&format!("big {path} {}", ROUND.as_millis() * 2), "big ");
            let (bytes, nanos) = said.split_once(' ').expect("big BYTES NANOS");
            if round > 0 {
                big[i].push(bytes.parse::<f64>().unwrap() / (nanos.parse::<f64>().unwrap() / 1e9));
            }
        }
    }
    let (big_fuse, big_tmpfs) = (stats(&mut big[0]), stats(&mut big[1]));

    // Rotation: poll in the task, rotate through the API, compare the stamps.
    let bundle = TlsBundle::read(&vault.admin_dir()).expect("admin bundle");
    let mut client = AdminClient::new(runtime.block_on(connect_channel(&vault.addr, &bundle)).expect("connect"));
    let mut latencies = Vec::with_capacity(ROTATIONS);
    // Also from the moment the call is made: an upper bound that cannot go negative.
    let mut from_call = Vec::with_capacity(ROTATIONS);
    for i in 1..=ROTATIONS {
        let prefix = format!("v{i:04}-");
        readers[main].task.ask(&format!("poll {SECRET} {prefix}"), "polling");
        let request = pb::RotateRequest {
            kind: pb::Kind::Secret as i32,
            reference: "x".into(),
            data: value(&prefix),
            ..Default::default()
        };
        let sent = wall_nanos();
        runtime.block_on(client.rotate(request)).expect("rotate");
        let returned = wall_nanos();
        let seen: i128 = readers[main].task.expect("seen ").parse().expect("nanos");
        latencies.push(seen - returned);
        from_call.push(seen - sent);
    }
    latencies.sort();
    from_call.sort();
    let labels: Vec<String> = readers.iter().map(|r| r.setup.label.clone()).collect();
    for r in readers {
        r.finish();
    }

    let ms = |nanos: i128| format!("{:.2} ms", nanos as f64 / 1e6);
    let rank = |v: &[i128], q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    println!();
    println!("agent: vault + agents on loopback ({profile} build), tasks started by `hush run`, {SIZE}-byte secret");
    println!(
        "open+read+close/s inside the task, best / median of {ROUNDS} interleaved rounds of {} ms; \
         x = slower than tmpfs (best / median); p99 of one open+read+close (median round)",
        ROUND.as_millis()
    );
    println!("{:<40} {:>8} {:>17} {:>13} {:>10}", "setup", "readers", "ops/s", "x tmpfs", "p99");
    for (n, rows) in &reads {
        let tmpfs = rows[rows.len() - 1].0;
        for (i, (rate, p99)) in rows.iter().enumerate() {
            let label = labels.get(i).map_or("tmpfs, same task", String::as_str);
            let ratio = if i == rows.len() - 1 {
                String::new()
            } else {
                format!("{:.1}x / {:.1}x", tmpfs.0 / rate.0, tmpfs.1 / rate.1)
            };
            println!("{label:<40} {n:>8} {:>17} {ratio:>13} {:>7.1} us", pair(*rate), p99 / 1e3);
        }
    }
    println!();
    println!("{:<58} {:>14}", "measure (default setup, auditing on)", "value");
    println!("{:<58} {:>14.0}", "1-reader loop: opens/s", loop_ops / loop_secs);
    println!("{:<58} {:>14.1}", "1-reader loop: audit entries written/s", audit_per_sec);
    println!("{:<58} {:>14}", format!("{BIG}-byte config read whole, MB/s, FUSE"), mb(big_fuse));
    println!("{:<58} {:>14}", format!("{BIG}-byte file read whole, MB/s, tmpfs"), mb(big_tmpfs));
    println!("{:<58} {:>13.1}x", "  FUSE slower than tmpfs by (best)", big_tmpfs.0 / big_fuse.0);
    for (what, v) in [("rotate RPC return", &latencies), ("rotate RPC call", &from_call)] {
        let median = ms(rank(v, 0.5));
        println!("{:<58} {:>14}", format!("{what} -> new value read in task, median ({ROTATIONS})"), median);
        println!("{:<58} {:>14}", "  p99", ms(rank(v, 0.99)));
        println!("{:<58} {:>14}", "  min / max", format!("{} / {}", ms(v[0]), ms(v[v.len() - 1])));
    }
    println!();
    println!("{:<58} {:>9} {:>9}", "agent memory (MiB)", "VmRSS", "VmLck");
    let mut memory_rows = memory_rows;
    memory_rows.push(("agent (default setup) serving the task".to_string(), task_rss.0, task_rss.1));
    for (what, rss, lck) in memory_rows {
        println!("{what:<58} {:>9.1} {:>9.1}", rss as f64 / 1024.0, lck as f64 / 1024.0);
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

/// (VmRSS, VmLck) of process `pid`, in KiB.
fn memory_of(pid: u32) -> (u64, u64) {
    (hush_tests::proc_status_kib(pid, "VmRSS:"), hush_tests::proc_status_kib(pid, "VmLck:"))
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
                            // At least one batch each, even if the round is over before the
                            // thread runs (a loaded machine): ops and elapsed stay consistent.
                            loop {
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
                                if start.elapsed() >= length {
                                    break;
                                }
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
