//! Audit query benchmark: the vault's memory while 100 `hush audit` queries read a 100 MB log at
//! once, against a baseline measured in the same run (the same vault idle, and with one query),
//! and at 10 MB of log, to show that a query's memory does not grow with the log.
//!
//! Run: `cargo build --bins && cargo bench -p hush-tests --bench audit --profile dev` (or
//! `--release` after `cargo build --release --bins`).
//!
//! - **Filling the log**: through the vault's own audit writer ([`hush_vault::vault::Vault::open`]
//!   on the stopped vault's data dir, then `AuditLog::record_all`), in a child process of this
//!   binary, so the entries are keyed and chained exactly as a running vault writes them and the
//!   vault then starts on them (checking the tail against the recorded head). The API would take
//!   minutes per 100 MB (one audited call per entry); node reports carry 20,000 events/s at most.
//!   Entries are agents' `read`s of 100 secrets, about 400 bytes each.
//! - **Queries**: `hush audit --secret s-7 --format json`, the real CLI, 1 and then 100 at once:
//!   the vault reads and parses the whole log for each and sends 1% of it. Then 100 unfiltered
//!   queries through the API that read 100 lines and stop reading (stalled clients: what the vault
//!   buffers for a reader that does not keep up).
//! - **Memory**: the vault's VmRSS sampled every 5 ms during each phase (peak), and VmHWM after
//!   resetting it (`/proc/PID/clear_refs`) at the phase's start.
//!
//! Figures are printed, never asserted.
//!
//! One run on 2 cores shared with 7 other engineers' builds (2026-12-01, debug build of hush's
//! crates, dependencies optimised), vault memory in MiB, 11 MB log / 100 MB log:
//!
//! | | 11 MB | 100 MB |
//! |---|---|---|
//! | idle VmRSS (baseline) | 17.8 | 17.9 |
//! | 1 query, VmHWM | 20.1 | 20.4 |
//! | 100 concurrent queries, VmHWM | 42.6 | 42.8 (2.39x idle, 2.10x one query) |
//! | 100 stalled unfiltered queries, VmHWM | 61.0 | 61.0 |
//! | 1 query / 100 concurrent, seconds | 0.42 / 16.9 | 3.1 / 219 |
//!
//! Memory does not grow with the log; it grows with the queries open (about 0.25 MiB each while
//! reading, 0.43 MiB each stalled: the 256-line read-ahead, the 256-message send queue, TLS and
//! HTTP/2 buffers). A line whose text lacks the query's `"secret":"NAME"` is not parsed
//! (`Query::needles`): before that, one query over 100 MB took 6.2 s and 100 took 272 s.

use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use hush_tests::TestVault;
use hush_vault::audit::AuditEntry;
use hush_vault::client::{TlsBundle, connect_channel};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Set to `DATA_DIR:BYTES` when this binary runs as the filler.
const FILL_ENV: &str = "HUSH_BENCH_AUDIT_FILL";
const MB: u64 = 1_000_000;
const SIZES: [u64; 2] = [10 * MB, 100 * MB];
const QUERIES: usize = 100;
const SECRETS: usize = 100;
const STALLED_READS: usize = 100;

fn main() {
    if let Ok(spec) = std::env::var(FILL_ENV) {
        let (dir, bytes) = spec.rsplit_once(':').expect("DIR:BYTES");
        return fill(Path::new(dir), bytes.parse().expect("bytes"));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut vault = TestVault::init(&[]);
    let mut columns = Vec::new();
    for size in SIZES {
        let filled = Instant::now();
        let status = Command::new(std::env::current_exe().expect("this binary"))
            .env(FILL_ENV, format!("{}:{size}", vault.data_dir.display()))
            .status()
            .expect("filler runs");
        assert!(status.success(), "filler failed");
        let fill_time = filled.elapsed();
        vault.start();
        let column = runtime.block_on(measure(&vault));
        eprintln!("{} MB filled in {:.1} s: {column:?}", size / MB, fill_time.as_secs_f64());
        columns.push((log_bytes(&vault.data_dir), column));
        vault.stop();
    }
    print_table(&columns);
}

/// Appends `read` entries through the vault's own writer until the log holds `bytes`.
fn fill(data_dir: &Path, bytes: u64) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let vault = hush_vault::vault::Vault::open(&hush_vault::layout::DataDir::new(data_dir)).expect("vault opens");
        let mut i = 0usize;
        while log_bytes(data_dir) < bytes {
            let batch: Vec<AuditEntry> = (0..2_000)
                .map(|_| {
                    i += 1;
                    read_entry(i)
                })
                .collect();
            vault.audit().record_all(batch).await;
        }
    });
}

/// What an agent's report of one read becomes (as `reports::entries_for` states it).
fn read_entry(i: usize) -> AuditEntry {
    AuditEntry {
        node: Some("m3kq9t2x7v1b5n8c4z6w0y2aa".into()),
        service: Some(format!("web-{}", i % 10)),
        task: Some(format!("t{:024}", i % 1000)),
        version: Some(3),
        pid: Some(1000 + (i % 30000) as u32),
        uid: Some(0),
        gid: Some(0),
        command: Some("python3".into()),
        bytes: Some(1024),
        path: Some(format!("/run/secrets/s-{}", i % SECRETS)),
        ..AuditEntry::now("read")
            .actor("node:m3kq9t2x7v1b5n8c4z6w0y2aa")
            .object(hush_vault::model::Kind::Secret, &format!("s-{}", i % SECRETS))
    }
}

fn log_bytes(data_dir: &Path) -> u64 {
    let dir = data_dir.join("audit");
    std::fs::read_dir(&dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// The vault's memory over one phase: peak sampled VmRSS and VmHWM (reset at the start), KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    peak_rss: u64,
    hwm: u64,
    seconds: f64,
}

/// Samples `pid`'s VmRSS every 5 ms while `phase` runs.
async fn sampled<F: std::future::Future<Output = ()>>(pid: u32, phase: F) -> Memory {
    // "5": reset the peak RSS (VmHWM) to the current RSS (proc(5), clear_refs).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(hush_tests::proc_status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let start = Instant::now();
    phase.await;
    let seconds = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    Memory { peak_rss: peak.load(Ordering::Relaxed), hwm: hush_tests::proc_status_kib(pid, "VmHWM:"), seconds }
}

#[derive(Debug, Clone, Copy, Default)]
struct Column {
    idle: Memory,
    one: Memory,
    many: Memory,
    stalled: Memory,
    matches: usize,
}

/// `hush audit --secret s-7 --format json` by `n` CLI processes at once; the entries the first printed.
async fn queries(vault: &TestVault, n: usize) -> usize {
    let children: Vec<_> = (0..n)
        .map(|i| {
            let mut command = vault.command();
            command.args(["audit", "--secret", "s-7", "--format", "json"]).stdin(Stdio::null());
            command.stdout(if i == 0 { Stdio::piped() } else { Stdio::null() }).stderr(Stdio::piped());
            command.spawn().expect("hush audit runs")
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut matches = 0;
        for (i, child) in children.into_iter().enumerate() {
            let output = child.wait_with_output().expect("hush audit exits");
            assert!(output.status.success(), "hush audit failed: {}", String::from_utf8_lossy(&output.stderr));
            if i == 0 {
                let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
                matches = json.as_array().expect("array").len();
            }
        }
        matches
    })
    .await
    .expect("queries")
}

async fn measure(vault: &TestVault) -> Column {
    let pid = vault.pid();
    let bundle = TlsBundle::read(&vault.admin_dir()).expect("bundle");
    let idle = sampled(pid, tokio::time::sleep(Duration::from_millis(500))).await;
    let mut matches = 0;
    let one = sampled(pid, async { matches = queries(vault, 1).await }).await;
    let many = sampled(pid, async {
        assert_eq!(queries(vault, QUERIES).await, matches);
    })
    .await;
    // Unfiltered queries on their own connections that stop reading after a few lines.
    let mut streams = Vec::new();
    for _ in 0..QUERIES {
        let channel = connect_channel(&vault.addr, &bundle).await.expect("connect");
        streams.push(AdminClient::new(channel));
    }
    let stalled = sampled(pid, async {
        let mut open = Vec::new();
        for client in &mut streams {
            let mut lines = client.audit_query(pb::AuditQueryRequest::default()).await.expect("query").into_inner();
            for _ in 0..STALLED_READS {
                lines.message().await.expect("line").expect("a line");
            }
            open.push(lines);
        }
        // Let the vault fill whatever it buffers for readers that do not read.
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(open);
    })
    .await;
    Column { idle, one, many, stalled, matches }
}

fn print_table(columns: &[(u64, Column)]) {
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    println!();
    print!("{:<58}", "vault memory (MiB), log size");
    for (bytes, _) in columns {
        print!(" {:>14}", format!("{:.0} MB", *bytes as f64 / MB as f64));
    }
    println!();
    let row = |label: &str, cell: &dyn Fn(&Column) -> String| {
        print!("{label:<58}");
        for (_, column) in columns {
            print!(" {:>14}", cell(column));
        }
        println!();
    };
    row("idle VmRSS (baseline)", &|c| mib(c.idle.peak_rss));
    row("1 query: peak VmRSS / VmHWM", &|c| format!("{} / {}", mib(c.one.peak_rss), mib(c.one.hwm)));
    row(&format!("{QUERIES} concurrent queries: peak VmRSS / VmHWM"), &|c| {
        format!("{} / {}", mib(c.many.peak_rss), mib(c.many.hwm))
    });
    row(&format!("  {QUERIES} queries vs idle"), &|c| format!("{:.2}x", c.many.hwm as f64 / c.idle.peak_rss as f64));
    row(&format!("  {QUERIES} queries vs 1 query"), &|c| format!("{:.2}x", c.many.hwm as f64 / c.one.hwm as f64));
    row(&format!("{QUERIES} stalled unfiltered queries: peak VmRSS / VmHWM"), &|c| {
        format!("{} / {}", mib(c.stalled.peak_rss), mib(c.stalled.hwm))
    });
    row("entries each query returned (1% of the log)", &|c| c.matches.to_string());
    row("1 query: seconds", &|c| format!("{:.2}", c.one.seconds));
    row(&format!("{QUERIES} concurrent queries: seconds"), &|c| format!("{:.2}", c.many.seconds));
}
