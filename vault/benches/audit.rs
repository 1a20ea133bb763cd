//! Audit append throughput: entries/s through `AuditLog::record`, one writer waiting for each
//! entry (every entry its own fsync) vs many concurrent writers (group commit), in one run.
//! Run: `cargo bench -p hush-vault --bench audit`.

use hush_vault::audit::{AuditEntry, AuditLog};
use hush_vault::store::redb::RedbStore;
use std::sync::Arc;
use std::time::Instant;

const SEQUENTIAL: usize = 500;
const CONCURRENT: usize = 50_000;
const WRITERS: usize = 64;

fn entry(i: usize) -> AuditEntry {
    let mut entry = AuditEntry::now("read").actor("node:bench");
    entry.secret = Some(format!("secret{}", i % 100));
    entry.pid = Some(1000 + i as u32);
    entry.command = Some("cat".into());
    entry.bytes = Some(1024);
    entry
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(RedbStore::open(&dir.path().join("store.redb")).expect("store"));
    let log = Arc::new(
        AuditLog::open(&dir.path().join("audit"), store, Some(&hush_vault::crypto::Key::random())).expect("log"),
    );

    let start = Instant::now();
    for i in 0..SEQUENTIAL {
        log.record(entry(i)).await;
    }
    let sequential = SEQUENTIAL as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..CONCURRENT).step_by(WRITERS) {
                log.record(entry(i)).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let concurrent = CONCURRENT as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let batch: Vec<_> = (0..CONCURRENT).map(entry).collect();
    log.record_all(batch).await;
    let batched = CONCURRENT as f64 / start.elapsed().as_secs_f64();
    let verified = log.verify().await.expect("chain verifies");

    println!();
    println!("{:<48} {:>12}", "audit append", "entries/s");
    println!("{:<48} {:>12.0}", format!("1 writer, waiting for each ({SEQUENTIAL})"), sequential);
    println!(
        "{:<48} {:>12.0}   {:.1}x",
        format!("{WRITERS} writers ({CONCURRENT})"),
        concurrent,
        concurrent / sequential
    );
    println!(
        "{:<48} {:>12.0}   {:.1}x",
        format!("one batch, as node reports arrive ({CONCURRENT})"),
        batched,
        batched / sequential
    );
    println!("{:<48} {:>12}", "entries verified after the run", verified.entries);
}
