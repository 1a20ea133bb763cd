//! Vault benchmark: create throughput through the API (10,000 secrets of 1 KiB), cold start
//! with them stored (process start to first answered `ls`), and the vault's memory at that size.
//!
//! Run: `cargo build --release --bins && cargo bench -p hush-tests --bench vault`.
//! Figures are printed, never asserted; throughput is also given against a baseline measured in
//! the same run (one writer at a time), since these machines are noisy.

use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use hush_tests::TestVault;
use hush_vault::client::{TlsBundle, connect_channel};
use std::time::Instant;

const SECRETS: usize = 10_000;
const BASELINE: usize = 500;
const IN_FLIGHT: usize = 64;

fn create(name: String) -> pb::CreateRequest {
    pb::CreateRequest { kind: pb::Kind::Secret as i32, name, labels: Default::default(), data: vec![b's'; 1024] }
}

/// Creates `count` secrets with `writers` concurrent callers; returns creates per second.
async fn create_many(channel: &tonic::transport::Channel, prefix: &str, count: usize, writers: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = AdminClient::new(channel.clone());
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for i in (w..count).step_by(writers) {
                client.create(create(format!("{prefix}{i}"))).await.expect("create");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    count as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut vault = TestVault::start_new();
    let bundle = TlsBundle::read(&vault.admin_dir()).expect("bundle");
    let channel = connect_channel(&vault.addr, &bundle).await.expect("connect");

    let sequential = create_many(&channel, "baseline-", BASELINE, 1).await;
    let concurrent = create_many(&channel, "s-", SECRETS, IN_FLIGHT).await;
    let rss_warm = hush_tests::proc_status_kib(vault.pid(), "VmRSS:");

    vault.stop();
    let start = Instant::now();
    vault.start();
    let listed = vault.hush(&["secret", "ls", "-q"]);
    let cold_start = start.elapsed();
    let count = listed.ok().lines().count();
    assert_eq!(count, SECRETS + BASELINE);
    let ls_start = Instant::now();
    vault.hush(&["secret", "ls", "-q"]).ok();
    let warm_ls = ls_start.elapsed();
    let rss_cold = hush_tests::proc_status_kib(vault.pid(), "VmRSS:");
    let store_size = std::fs::metadata(vault.data_dir.join("store.redb")).expect("store").len();

    println!();
    println!("{:<52} {:>14}", "measure", "value");
    println!("{:<52} {:>14.0}", format!("creates/s, 1 writer ({BASELINE} x 1 KiB)"), sequential);
    println!("{:<52} {:>14.0}", format!("creates/s, {IN_FLIGHT} in flight ({SECRETS} x 1 KiB)"), concurrent);
    println!("{:<52} {:>13.1}x", "  group commit speed-up vs 1 writer", concurrent / sequential);
    println!(
        "{:<52} {:>12.0}ms",
        format!("cold start to first answered ls ({count} secrets)"),
        cold_start.as_secs_f64() * 1e3
    );
    println!("{:<52} {:>12.0}ms", "  of which the ls itself (warm, for comparison)", warm_ls.as_secs_f64() * 1e3);
    println!("{:<52} {:>11.1}MiB", "vault RSS after creating them", rss_warm as f64 / 1024.0);
    println!("{:<52} {:>11.1}MiB", "vault RSS after cold start + ls", rss_cold as f64 / 1024.0);
    println!("{:<52} {:>11.1}MiB", "store file size", store_size as f64 / 1048576.0);
}
