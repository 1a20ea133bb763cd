//! `hush vault migrate --from redb:DIR --to etcd://...` (a real etcd on loopback): an embedded
//! vault with secrets of several versions, a config, a service, a joined node and its audit
//! log moves into etcd; a replica then serves it all, the old admin bundle and node identity
//! work, the audit log verifies; a running source, a non-empty target and a second run are
//! refused; an interrupted run starts again.

use hush_tests::etcd::EtcdCluster;
use hush_tests::{Run, TestAgent, TestVault, bin, wait_for};
use serde_json::Value;
use std::process::Command;

fn migrate(from: &TestVault, url: &str) -> Run {
    let source = format!("redb:{}", from.data_dir.display());
    Run::from_command(Command::new(bin("hush")).args(["vault", "migrate", "--from", &source, "--to", url]))
}

async fn put(cluster: &EtcdCluster, key: &str, value: &[u8]) {
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    client.put(key, value, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_vault_moves_to_etcd_with_everything() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("/migrated");

    let mut old = TestVault::start_new();
    old.hush_stdin(&["secret", "create", "db", "-"], b"v1").ok();
    old.hush_stdin(&["secret", "rotate", "db", "-"], b"v2").ok();
    old.hush_stdin(&["secret", "rotate", "db", "-"], b"v3").ok();
    old.hush_stdin(&["config", "create", "site", "-"], b"listen 80;").ok();
    old.hush(&["service", "create", "web", "--secret", "db", "--config", "source=site,target=/etc/site.conf"]).ok();
    let mut agent = TestAgent::join(&old);
    let mut task = agent.session(&old, "web", "cat /run/secrets/db");
    assert_eq!(task.ask(), "v3");
    drop(task);
    let before: Vec<Value> = serde_json::from_str(old.hush(&["audit", "--format", "json"]).ok()).unwrap();

    // Not while the embedded vault runs.
    migrate(&old, &url).fails_with("is running");
    agent.stop();
    old.stop();
    // Not into a prefix that holds something else.
    put(&cluster, "/busy/x", b"1").await;
    migrate(&old, &cluster.url("/busy")).fails_with("is not empty");

    let done = migrate(&old, &url);
    assert!(done.ok().contains("Migrated"), "{}", done.stdout);
    assert!(done.stderr.contains("migrate: copied"), "progress: {}", done.stderr);

    // A replica on a new data dir (a copy of the key file), with the old admin bundle.
    let mut replica = TestVault::replica_of(&old);
    replica.serve_args = vec!["--store".into(), url.clone()];
    replica.start();
    let listed = replica.hush(&["secret", "ls"]);
    let row: Vec<&str> = listed.ok().lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!((row[1], row[2]), ("db", "3"), "{}", listed.stdout);
    replica.hush(&["config", "inspect", "site"]).ok();
    assert!(replica.hush(&["service", "ls"]).ok().contains("web"));
    assert_eq!(replica.hush(&["node", "ls"]).ok().lines().count(), 2, "the joined node moved");

    // The node's identity is valid on the etcd vault: its agent comes back pointed at it.
    agent.start(&["--vault", &replica.addr]).expect("the node reconnects");
    let mut task = agent.session(&replica, "web", "cat /run/secrets/db /etc/site.conf");
    assert_eq!(task.ask(), "v3listen 80;");
    replica.hush_stdin(&["secret", "rotate", "db", "-"], b"v4").ok();
    wait_for("a rotation on the migrated vault", || (task.ask() == "v4listen 80;").then_some(()));
    drop(task);

    // The audit log moved: the old entries, in the merged log, and every chain verifies.
    let after: Vec<Value> = serde_json::from_str(replica.hush(&["audit", "--format", "json"]).ok()).unwrap();
    for entry in &before {
        assert!(after.contains(entry), "audit entry lost: {entry}");
    }
    let verified = replica.hush(&["audit", "verify"]);
    assert!(verified.ok().contains("in 2 chains"), "{}", verified.stdout);

    // A second run is refused, nothing changed.
    migrate(&old, &url).fails_with("already holds a vault");

    // An interrupted run (its marker and part of the data there) starts again and finishes.
    let canonical = std::fs::canonicalize(&old.data_dir).unwrap();
    let marker = serde_json::json!({"from": canonical.display().to_string(), "chain": "interrupted1"});
    put(&cluster, "/again/cluster/migration", marker.to_string().as_bytes()).await;
    put(&cluster, "/again/secret/partial", b"junk").await;
    let resumed = migrate(&old, &cluster.url("/again"));
    resumed.ok();
    assert!(resumed.stderr.contains("resuming an interrupted migration"), "{}", resumed.stderr);
    // ... but not one from another vault.
    let other = serde_json::json!({"from": "/elsewhere", "chain": "x"});
    put(&cluster, "/other/cluster/migration", other.to_string().as_bytes()).await;
    migrate(&old, &cluster.url("/other")).fails_with("interrupted migration from /elsewhere");
}
