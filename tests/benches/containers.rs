//! Containers benchmark: real Docker containers reading a service's files through the agent.
//!
//! Run: `cargo build --release --bins && cargo bench -p hush-tests --bench containers` (root,
//! /dev/fuse, a Docker engine; the harness starts one if none answers).
//!
//! - **First read**: from spawning `docker run` to the first byte of a 1 KiB secret read by the new
//!   container's `cat` (cold: the agent inspects the container, starts its task on the vault and
//!   answers), over 50 containers; the baseline is the same `docker run` reading a 1 KiB file of the
//!   image itself, in the same run. p50 and p99 of each.
//! - **open + read + close inside a container**: busybox `cat` of the 1 KiB secret, N paths per
//!   invocation (one process, N opens), against the same bytes on a tmpfs inside the same
//!   container; short rounds interleaved, best round of each; timed inside the container
//!   (`adjtimex`, microseconds, less the cost of reading the clock).
//!
//! Figures are printed, never asserted.

use hush_tests::docker::{self, Container, Engine};
use hush_tests::{Run, TestAgent, TestVault, wait_for};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONTAINERS: usize = 50;
const SIZE: usize = 1024;
const OPENS_PER_ROUND: usize = 5000;
const ROUNDS: usize = 8;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Spawns `docker run ARGS` and returns the time until its stdout has `SIZE` bytes.
fn first_read(args: &[&str]) -> Duration {
    let started = Instant::now();
    let mut child = Command::new("docker")
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker run");
    let mut out = child.stdout.take().expect("piped");
    let mut got = vec![0u8; SIZE];
    out.read_exact(&mut got).expect("the container printed the file");
    let elapsed = started.elapsed();
    let _ = child.wait();
    elapsed
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let image = docker::image();
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    vault.hush_stdin(&["secret", "create", "x", "-"], &vec![b'x'; SIZE]).ok();
    vault.hush(&["service", "create", "bench", "--secret", "x"]).ok();
    let dir = agent.mount_root().join("services/bench");
    wait_for("the service directory", || dir.is_dir().then_some(()));
    let hush = |args: &[&str]| {
        Run::from_command(vault.command().env("HUSH_MOUNT_ROOT", agent.mount_root()).args(args)).ok().to_string()
    };
    let mounts = hush(&["service", "mounts", "bench"]);
    let flags: Vec<&str> = mounts.split_whitespace().collect();

    // A 1 KiB file in the image's own filesystem for the baseline (written once into a layer).
    let base_image = {
        let c = Container::run_detached(Engine::Docker, &["--network", "none", &image, "sleep", "60"]);
        c.exec(&["sh", "-c", &format!("head -c {SIZE} /dev/zero | tr '\\0' x > /base")]).ok();
        docker::docker(&["commit", &c.id]).ok().trim().to_string()
    };

    let mut hush_times = Vec::with_capacity(CONTAINERS);
    let mut base_times = Vec::with_capacity(CONTAINERS);
    for _ in 0..CONTAINERS {
        let base = ["--rm", "--network", "none", &base_image, "cat", "/base"];
        base_times.push(first_read(&base));
        let mut args = vec!["--rm", "--network", "none"];
        args.extend(&flags);
        args.extend([image.as_str(), "cat", "/run/secrets/x"]);
        hush_times.push(first_read(&args));
    }
    hush_times.sort();
    base_times.sort();

    // open + read + close inside one container: Hush's bind vs a tmpfs of the same container.
    let mut args = vec!["--network", "none", "--tmpfs", "/tmpfs"];
    args.extend(&flags);
    args.extend([image.as_str(), "sleep", "600"]);
    let c = Container::run_detached(Engine::Docker, &args);
    c.exec(&["cp", "/run/secrets/x", "/tmpfs/x"]).ok();
    let round = |path: &str| -> f64 {
        let script = format!(
            "now() {{ set -- $(adjtimex | awk '/tv_sec/{{print $2}} /tv_usec/{{print $2}}'); echo $(($1 * 1000000 + $2)); }}; \
             set --; i=0; while [ $i -lt {OPENS_PER_ROUND} ]; do set -- \"$@\" {path}; i=$((i+1)); done; \
             z=$(now); y=$(now); a=$(now); cat \"$@\" >/dev/null; b=$(now); echo $((b - a - (y - z)))"
        );
        let micros: f64 = c.exec(&["sh", "-c", &script]).ok().trim().parse().expect("microseconds");
        micros / OPENS_PER_ROUND as f64
    };
    let (mut best_hush, mut best_tmpfs) = (f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        best_hush = best_hush.min(round("/run/secrets/x"));
        best_tmpfs = best_tmpfs.min(round("/tmpfs/x"));
    }

    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!("containers: {CONTAINERS} `docker run` per variant, interleaved; 1 KiB file");
    println!("{:<46} {:>10} {:>10}", "first read from `docker run` start", "p50", "p99");
    println!(
        "{:<46} {:>10} {:>10}",
        "  image file (baseline)",
        ms(percentile(&base_times, 50.0)),
        ms(percentile(&base_times, 99.0))
    );
    println!(
        "{:<46} {:>10} {:>10}",
        "  hush secret (cold: inspect + task start)",
        ms(percentile(&hush_times, 50.0)),
        ms(percentile(&hush_times, 99.0))
    );
    let signed = |a: Duration, b: Duration| format!("{:+.1} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0);
    println!(
        "{:<46} {:>10} {:>10}",
        "  hush - baseline",
        signed(percentile(&hush_times, 50.0), percentile(&base_times, 50.0)),
        signed(percentile(&hush_times, 99.0), percentile(&base_times, 99.0))
    );
    println!();
    println!("open+read+close of 1 KiB inside one container ({OPENS_PER_ROUND} per round, best of {ROUNDS})");
    println!("{:<46} {:>10.1} us/op", "  tmpfs", best_tmpfs);
    println!("{:<46} {:>10.1} us/op   {:.1}x tmpfs", "  hush (/run/secrets)", best_hush, best_hush / best_tmpfs);
    let _ = docker::docker(&["rmi", &base_image]);
}
