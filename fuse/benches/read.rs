//! open + read + close of a 1 KiB file: hush's FUSE mount against tmpfs, in one run.
//!
//! `cargo bench -p hush-fuse` (root, /dev/fuse). The benchmark process owns the task (its own
//! mount namespace), as a task's process would. Variants show where the time goes: FUSE thread
//! count, and the /proc lookups of the owner check (cached per thread with the namespace read
//! fresh, against a full lookup per open, against none).
//!
//! Every variant is mounted at once and the rounds are interleaved (variant 1, 2, ..., then again,
//! starting one further each time), so a burst of load from elsewhere on a shared machine hits all
//! variants alike; each reports its best round. Rounds are short and many: on a shared 2-core
//! machine a FUSE round trip waits for a free CPU twice, so long rounds measure the neighbours'
//! load more than the filesystem (300 ms rounds gave 2-4x slower "best" figures than 50 ms ones).

use std::fs::File;
use std::hint::black_box;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hush_fuse::{
    Caller, CallerResolver, FileKind, FileMeta, FileSpec, MountConfig, MountGuard, MountNamespaceOwner, Plaintext,
    ProcResolver, RequestInfo, SecretFs, TaskOwner, ThreadProbe, mount_namespace_of, mount_with_config,
};

const SIZE: usize = 1024;
const WARMUP: Duration = Duration::from_millis(200);
const ROUND: Duration = Duration::from_millis(50);
const ROUNDS: u32 = 40;

/// One open, one read of up to 4 KiB, one close.
fn open_read_close(path: &Path) -> io::Result<usize> {
    let mut buf = [0u8; 4096];
    let n = File::open(path)?.read(&mut buf)?;
    Ok(black_box(n))
}

/// CPU time used by this process so far (all threads: the reader, the FUSE threads and the
/// event consumer), from `utime + stime` in `/proc/self/stat` (clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the `(comm)`; utime and stime are fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest.split(' ').skip(11).take(2).map(|v| v.parse().expect("ticks")).collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

/// A resolver that answers without reading /proc: isolates the cost of the owner lookup.
struct Fixed(Caller);

impl CallerResolver for Fixed {
    fn resolve(&self, _req: &RequestInfo) -> io::Result<Caller> {
        Ok(self.0.clone())
    }
}

/// A namespace known in advance.
struct FixedNs(u64);

impl ThreadProbe for FixedNs {
    fn mount_namespace(&self) -> io::Result<u64> {
        Ok(self.0)
    }
}

/// The full /proc lookup on every call (a fresh resolver, so nothing cached): the cost before
/// the per-thread cache.
struct Uncached;

impl CallerResolver for Uncached {
    fn resolve(&self, req: &RequestInfo) -> io::Result<Caller> {
        ProcResolver::new().resolve(req)
    }
}

fn content() -> Arc<Plaintext> {
    Arc::new(Plaintext::new((0..SIZE).map(|i| (i % 251) as u8).collect()))
}

/// Set when this binary runs as a reader process (see [`ChildReader`]).
const CHILD_ENV: &str = "HUSH_FUSE_BENCH_CHILD";

/// A reader in a process of its own (this binary again), as a task's reader is: a FUSE round
/// trip then switches between two address spaces, not two threads of one. Reads `PATH MILLIS`
/// lines, answers `OPS NANOS` for a loop of that long.
struct ChildReader {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl ChildReader {
    /// `own_session`: in a session of its own (as `hush run` starts a task), which with
    /// `CONFIG_SCHED_AUTOGROUP` is also a scheduling group of its own.
    fn spawn(own_session: bool) -> Self {
        use std::io::BufRead;
        let exe = std::env::current_exe().expect("own path");
        let mut command = if own_session {
            let mut c = std::process::Command::new("setsid");
            c.arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        };
        let mut child = command
            .env(CHILD_ENV, "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the reader process");
        let stdin = child.stdin.take().expect("piped");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        ChildReader { child, stdin, stdout }
    }

    /// (ops, elapsed) of a loop on `path` for `length`.
    fn run(&mut self, path: &Path, length: Duration) -> (u64, Duration) {
        use std::io::Write;
        writeln!(self.stdin, "{} {}", path.display(), length.as_millis()).expect("reader stdin");
        let line = self.stdout.next().expect("reader answers").expect("reader output");
        let (ops, nanos) = line.split_once(' ').expect("OPS NANOS");
        (ops.parse().expect("ops"), Duration::from_nanos(nanos.parse().expect("nanos")))
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reader process's side of [`ChildReader`].
fn child_main() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lines() {
        let line = line.expect("stdin");
        let (path, millis) = line.rsplit_once(' ').expect("PATH MILLIS");
        let (ops, elapsed) = read_loop(Path::new(path), Duration::from_millis(millis.parse().expect("millis")));
        writeln!(out, "{ops} {}", elapsed.as_nanos()).expect("stdout");
        out.flush().expect("stdout");
    }
}

/// open+read+close of `path` in batches of 50 until `length` has passed: (ops, elapsed).
fn read_loop(path: &Path, length: Duration) -> (u64, Duration) {
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < length {
        for _ in 0..50 {
            open_read_close(path).unwrap();
        }
        ops += 50;
    }
    (ops, start.elapsed())
}

/// One way of serving the file, and its results so far.
struct Variant {
    name: &'static str,
    path: PathBuf,
    mount: Option<Mounted>,
    /// Reads are made by this process, or by a reader process of its own.
    child: Option<ChildReader>,
    best: f64,
    /// Every round's rate.
    rates: Vec<f64>,
    ops: u64,
    cpu: Duration,
}

/// A live FUSE mount of a filesystem owned by this process's namespace, and its event consumer.
struct Mounted {
    _dir: tempfile::TempDir,
    guard: MountGuard,
    fs: Arc<SecretFs>,
    consumer: JoinHandle<usize>,
}

impl Variant {
    fn new(name: &'static str, path: PathBuf, mount: Option<Mounted>, child: Option<ChildReader>) -> Self {
        Variant { name, path, mount, child, best: 0.0, rates: Vec::new(), ops: 0, cpu: Duration::ZERO }
    }

    fn tmpfs(shm: &Path) -> Self {
        let path = shm.join("secret");
        std::fs::write(&path, content().expose_secret()).expect("write tmpfs file");
        Variant::new("tmpfs (/dev/shm)", path, None, None)
    }

    /// The same, read by a process of its own.
    fn in_child(mut self, name: &'static str) -> Self {
        self.name = name;
        self.child = Some(ChildReader::spawn(false));
        self
    }

    /// A second variant on `self`'s mount, read by a process of its own.
    fn child_of(&self, name: &'static str, own_session: bool) -> Self {
        let child = Some(ChildReader::spawn(own_session));
        Variant::new(name, self.path.clone(), None, child)
    }

    fn fuse(name: &'static str, threads: usize, resolver: Option<Arc<dyn CallerResolver>>) -> Self {
        Self::fuse_audited(name, threads, resolver, true)
    }

    /// `audited: false` mounts without an event sink: the cost of auditing is the difference.
    fn fuse_audited(
        name: &'static str,
        threads: usize,
        resolver: Option<Arc<dyn CallerResolver>>,
        audited: bool,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = sync_channel(65536);
        // Consume events as the agent should: in batches, so that sending one never wakes a thread
        // blocked on the channel (a wakeup per event costs more CPU here than the event itself).
        let consumer = std::thread::spawn(move || {
            let mut n = 0usize;
            loop {
                std::thread::sleep(Duration::from_millis(20));
                loop {
                    match rx.try_recv() {
                        Ok(_) => n += 1,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return n,
                    }
                }
            }
        });
        let mut fs = if audited { SecretFs::new().with_event_sink(tx) } else { SecretFs::new() };
        if let Some(r) = resolver {
            fs = fs.with_resolver(r);
        }
        let fs = Arc::new(fs);
        let owner = MountNamespaceOwner::of_process(std::process::id()).expect("own namespace");
        fs.add_task(
            "bench",
            Some(TaskOwner::new(owner)),
            vec![FileSpec {
                path: "secret".into(),
                uid: 0,
                gid: 0,
                mode: 0o400,
                content: content(),
                meta: FileMeta { kind: FileKind::Secret, name: "secret".into(), version: 1 },
                pinned: false,
            }],
        )
        .expect("add task");
        let guard = mount_with_config(fs.clone(), dir.path(), &MountConfig { threads })
            .expect("mount (needs root and /dev/fuse)");
        let path = dir.path().join("bench/secret");
        let mount = Some(Mounted { _dir: dir, guard, fs, consumer });
        Variant::new(name, path, mount, None)
    }

    fn warm_up(&mut self) {
        assert_eq!(open_read_close(&self.path).expect("first read"), SIZE);
        match &mut self.child {
            Some(child) => drop(child.run(&self.path, WARMUP)),
            None => drop(read_loop(&self.path, WARMUP)),
        }
    }

    fn round(&mut self) {
        let cpu_start = process_cpu();
        let (ops, elapsed) = match &mut self.child {
            Some(child) => child.run(&self.path, ROUND),
            None => read_loop(&self.path, ROUND),
        };
        self.best = self.best.max(ops as f64 / elapsed.as_secs_f64());
        self.rates.push(ops as f64 / elapsed.as_secs_f64());
        self.ops += ops;
        self.cpu += process_cpu() - cpu_start;
    }

    fn finish(&mut self) {
        if let Some(m) = self.mount.take() {
            m.guard.unmount().expect("unmount");
            assert_eq!(m.fs.dropped_events(), 0, "event sink kept up");
            drop(m.fs);
            m.consumer.join().expect("consumer");
        }
    }
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child_main();
    }
    // `cargo bench` passes `--bench`; filters are not supported.
    let shm = tempfile::tempdir_in("/dev/shm").expect("tmpfs at /dev/shm");
    let me = std::process::id();
    let fixed: Arc<dyn CallerResolver> = Arc::new(Fixed(Caller {
        tid: me,
        pid: me,
        uid: 0,
        gid: 0,
        command: "bench".into(),
        probe: Arc::new(FixedNs(mount_namespace_of(me).expect("own namespace"))),
    }));
    let one = Variant::fuse("hush fuse, 1 thread", 1, None);
    let two = Variant::fuse("hush fuse, 2 threads (default)", 2, None);
    // The floor of this design: one OPEN and one RELEASE round trip, nothing checked or recorded.
    let floor = Variant::fuse_audited("hush fuse, 1 thread, no lookup, audit off", 1, Some(fixed.clone()), false);
    let mut variants = vec![
        Variant::tmpfs(shm.path()),
        Variant::tmpfs(shm.path()).in_child("tmpfs, reader process"),
        one.child_of("1 thread, reader process", false),
        one.child_of("1 thread, reader process, own session", true),
        two.child_of("2 threads, reader process", false),
        two.child_of("2 threads, reader process, own session", true),
        floor.child_of("floor, reader process", false),
        floor.child_of("floor, reader process, own session", true),
        one,
        two,
        floor,
        Variant::fuse_audited("hush fuse, 2 threads, audit off", 2, None, false),
        Variant::fuse_audited("hush fuse, 1 thread, audit off", 1, None, false),
        Variant::fuse("hush fuse, 4 threads", 4, None),
        Variant::fuse("hush fuse, 2 threads, uncached lookup", 2, Some(Arc::new(Uncached))),
        Variant::fuse("hush fuse, 2 threads, no /proc lookup", 2, Some(fixed)),
    ];
    for v in &mut variants {
        v.warm_up();
    }
    for round in 0..ROUNDS as usize {
        // Start each round with a different variant: whatever runs first after a pause pays more.
        let n = variants.len();
        for i in 0..n {
            variants[(round + i) % n].round();
        }
    }
    for v in &mut variants {
        v.finish();
    }

    // The owner lookup alone: a thread seen before (the cache: one readlinkat of the namespace
    // link, command through the kept comm fd), and a thread seen for the first time.
    let resolver = ProcResolver::new();
    let start = Instant::now();
    let n = 20_000;
    for _ in 0..n {
        let caller = resolver.resolve(&RequestInfo { tid: me, uid: 0, gid: 0 }).expect("resolve self");
        black_box(caller.mount_namespace().expect("namespace"));
    }
    let resolve_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let start = Instant::now();
    let n = 2_000;
    for _ in 0..n {
        let caller = ProcResolver::new().resolve(&RequestInfo { tid: me, uid: 0, gid: 0 }).expect("resolve self");
        black_box(caller.mount_namespace().expect("namespace"));
    }
    let first_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;

    // A reader process is compared with tmpfs read by a reader process.
    for v in &mut variants {
        v.rates.sort_by(f64::total_cmp);
    }
    let median = |v: &Variant| v.rates[v.rates.len() / 2];
    // A reader process is compared with tmpfs read by a reader process.
    let tmpfs = |v: &Variant| if v.child.is_some() { &variants[1] } else { &variants[0] };
    println!(
        "open+read+close of a {SIZE}-byte file, single reader, best and median of {ROUNDS} interleaved rounds of {} ms",
        ROUND.as_millis()
    );
    println!("(cpu: this process's, per op: the server's, and the reader's when it reads in this process)");
    println!("{:<44} {:>17} {:>8} {:>13} {:>9}", "variant", "ops/s best / med", "us/op", "x tmpfs", "cpu us/op");
    for v in &variants {
        println!(
            "{:<44} {:>17} {:>8.2} {:>13} {:>9.1}",
            v.name,
            format!("{:.0} / {:.0}", v.best, median(v)),
            1e6 / v.best,
            format!("{:.1}x / {:.1}x", tmpfs(v).best / v.best, median(tmpfs(v)) / median(v)),
            v.cpu.as_secs_f64() * 1e6 / v.ops as f64
        );
    }
    println!(
        "ProcResolver::resolve (the owner check's /proc reads): {resolve_us:.2} us/call for a known thread, \
         {first_us:.2} us for a new one"
    );
}
