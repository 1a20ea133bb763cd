//! open + read + close of a 1 KiB file: hush's FUSE mount against tmpfs, in one run.
//!
//! `cargo bench -p hush-fuse` (root, /dev/fuse). The benchmark process owns the task (its own
//! mount namespace), as a task's process would. Variants show where the time goes: FUSE thread
//! count, and the /proc lookups of the owner check.

use std::fs::File;
use std::hint::black_box;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use hush_fuse::{
    Caller, CallerResolver, FileKind, FileMeta, FileSpec, MountConfig, Plaintext, SecretFs,
    TaskOwner, mount_namespace_of, mount_with_config,
};

const SIZE: usize = 1024;
const WARMUP: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_secs(2);

/// One open, one read of up to 4 KiB, one close.
fn open_read_close(path: &Path) -> io::Result<usize> {
    let mut buf = [0u8; 4096];
    let n = File::open(path)?.read(&mut buf)?;
    Ok(black_box(n))
}

fn ops_per_sec(path: &Path) -> f64 {
    assert_eq!(open_read_close(path).expect("first read"), SIZE);
    let until = Instant::now() + WARMUP;
    while Instant::now() < until {
        open_read_close(path).unwrap();
    }
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < MEASURE {
        for _ in 0..100 {
            open_read_close(path).unwrap();
        }
        ops += 100;
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// A resolver that answers without reading /proc: isolates the cost of the owner lookup.
struct Fixed(Caller);

impl CallerResolver for Fixed {
    fn resolve(&self, _tid: u32) -> io::Result<Caller> {
        Ok(self.0.clone())
    }
}

fn content() -> Arc<Plaintext> {
    Arc::new(Plaintext::new((0..SIZE).map(|i| (i % 251) as u8).collect()))
}

/// Mount a filesystem owned by this process's namespace, measure, unmount.
fn measure_fuse(threads: usize, resolver: Option<Arc<dyn CallerResolver>>) -> (PathBuf, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = sync_channel(4096);
    // Consume events as the agent would, so the channel never fills.
    let consumer = std::thread::spawn(move || rx.iter().count());
    let mut fs = SecretFs::new().with_event_sink(tx);
    if let Some(r) = resolver {
        fs = fs.with_resolver(r);
    }
    let fs = Arc::new(fs);
    let ns = mount_namespace_of(std::process::id()).expect("own namespace");
    fs.add_task(
        "bench",
        Some(TaskOwner::MountNamespace(ns)),
        vec![FileSpec {
            path: "secret".into(),
            uid: 0,
            gid: 0,
            mode: 0o400,
            content: content(),
            meta: FileMeta {
                kind: FileKind::Secret,
                name: "secret".into(),
                version: 1,
            },
        }],
    )
    .expect("add task");
    let guard = mount_with_config(fs.clone(), dir.path(), &MountConfig { threads })
        .expect("mount (needs root and /dev/fuse)");
    let path = dir.path().join("bench/secret");
    let rate = ops_per_sec(&path);
    guard.unmount().expect("unmount");
    assert_eq!(fs.dropped_events(), 0, "event sink kept up");
    drop(fs);
    consumer.join().expect("consumer");
    (path, rate)
}

fn main() {
    // `cargo bench` passes `--bench`; filters are not supported.
    let shm = tempfile::tempdir_in("/dev/shm").expect("tmpfs at /dev/shm");
    let tmpfs_path = shm.path().join("secret");
    std::fs::write(&tmpfs_path, content().expose_secret()).expect("write tmpfs file");
    let tmpfs = ops_per_sec(&tmpfs_path);

    let me = std::process::id();
    let fixed: Arc<dyn CallerResolver> = Arc::new(Fixed(Caller {
        pid: me,
        mnt_ns: mount_namespace_of(me).expect("own namespace"),
        command: "bench".into(),
    }));
    let rows = [
        ("tmpfs (/dev/shm)".to_string(), tmpfs_path, tmpfs),
        {
            let (p, r) = measure_fuse(4, None);
            ("hush fuse, 4 threads".to_string(), p, r)
        },
        {
            let (p, r) = measure_fuse(1, None);
            ("hush fuse, 1 thread".to_string(), p, r)
        },
        {
            let (p, r) = measure_fuse(4, Some(fixed));
            ("hush fuse, 4 threads, no /proc lookup".to_string(), p, r)
        },
    ];

    let resolver = hush_fuse::ProcResolver::new();
    let start = Instant::now();
    let n = 20_000;
    for _ in 0..n {
        black_box(resolver.resolve(me).expect("resolve self"));
    }
    let resolve_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;

    println!(
        "open+read+close of a {SIZE}-byte file, {:.0} s each, single reader",
        MEASURE.as_secs_f64()
    );
    println!(
        "{:<40} {:<44} {:>10} {:>9} {:>9}",
        "variant", "path", "ops/s", "us/op", "vs tmpfs"
    );
    for (name, path, rate) in &rows {
        println!(
            "{:<40} {:<44} {:>10.0} {:>9.2} {:>8.1}x",
            name,
            path.display(),
            rate,
            1e6 / rate,
            tmpfs / rate
        );
    }
    println!("ProcResolver::resolve (the owner check's /proc reads): {resolve_us:.2} us/call");
}
