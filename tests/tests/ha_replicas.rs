//! Vault replicas on one etcd store (a real etcd on loopback): one replica end to end with
//! nothing in the clear in etcd, replicas that share keys, CA and nodes, and a replica cut off
//! from etcd that stops taking agent streams and says why.

use hush_tests::etcd::EtcdCluster;
use hush_tests::proxy::Proxy;
use hush_tests::{TestAgent, TestVault, files_containing, marker, wait_for};
use std::time::{Duration, Instant};

/// A vault initialised on `url` and serving from it.
fn first_replica(url: &str) -> TestVault {
    let mut vault = TestVault::init(&["--store", url]);
    vault.serve_args = vec!["--store".into(), url.into()];
    vault.start();
    vault
}

fn second_replica(first: &TestVault, url: &str) -> TestVault {
    let mut replica = TestVault::replica_of(first);
    replica.serve_args = vec!["--store".into(), url.into()];
    replica.start();
    replica
}

/// Every key and value under `prefix`, read with etcd's own client (no etcdctl).
async fn raw_etcd(cluster: &EtcdCluster, prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut client = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    let response = client.get(prefix.as_bytes(), Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    response.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_on_etcd_keeps_nothing_in_the_clear() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("/ha1");
    let vault = first_replica(&url);
    assert!(vault.init_stdout.contains(&format!("--store {url}")), "{}", vault.init_stdout);
    assert!(!vault.data_dir.join("store.redb").exists(), "no embedded store with etcd");

    let (secret, config) = (marker("secret"), marker("config"));
    vault.hush_stdin(&["secret", "create", "db_password", "-"], secret.as_bytes()).ok();
    vault.hush_stdin(&["secret", "rotate", "db_password", "-"], format!("{secret}-v2").as_bytes()).ok();
    vault.hush_stdin(&["config", "create", "site", "-"], config.as_bytes()).ok();
    let listed = vault.hush(&["secret", "ls"]);
    assert!(listed.ok().contains("db_password"), "{}", listed.stdout);
    vault.hush(&["config", "inspect", "site"]).ok();

    // The objects are in etcd, sealed: neither value appears in any key or value there.
    let raw = raw_etcd(&cluster, "/ha1/").await;
    assert!(raw.iter().any(|(k, _)| k.starts_with(b"/ha1/secret/data/")), "secret versions are in etcd");
    assert!(raw.iter().any(|(k, _)| k == b"/ha1/cluster/ca/key"), "the CA key is in etcd");
    for (key, value) in &raw {
        let name = String::from_utf8_lossy(key);
        for needle in [secret.as_bytes(), config.as_bytes()] {
            assert!(!contains(key, needle) && !contains(value, needle), "a value in the clear at {name}");
        }
        // The only private key in the clear is the unlock-only identity's (as in a data dir).
        assert!(!contains(value, b"PRIVATE KEY") || name == "/ha1/cluster/unlock/key", "a private key at {name}");
    }
    assert!(files_containing(&vault.data_dir, secret.as_bytes()).is_empty());

    // One vault per store: a second init on the same URL is refused, nothing written.
    let elsewhere = tempfile::tempdir().unwrap();
    let again = hush_tests::Run::from_command(
        std::process::Command::new(hush_tests::bin("hush"))
            .args(["vault", "init", "--store", &url, "--data-dir"])
            .arg(elsewhere.path().join("d")),
    );
    again.fails_with("already holds a vault");
    assert!(!elsewhere.path().join("d").exists());
    // An embedded vault's data dir is not taken over by an etcd replica.
    let embedded = TestVault::init(&[]);
    let run = hush_tests::Run::from_command(
        std::process::Command::new(hush_tests::bin("hush"))
            .args(["vault", "serve", "--listen", "127.0.0.1:0", "--store", &url, "--data-dir"])
            .arg(&embedded.data_dir),
    );
    run.fails_with("holds an embedded store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_objects_keys_ca_and_nodes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(3);
    let url = cluster.url("/ha2");
    let a = first_replica(&url);
    // B's data dir holds nothing but a copy of A's key file.
    let b = second_replica(&a, &url);

    let value = marker("shared");
    a.hush_stdin(&["secret", "create", "db_password", "-"], value.as_bytes()).ok();
    assert!(b.hush(&["secret", "ls"]).ok().contains("db_password"), "B sees A's write");
    b.hush_stdin(&["secret", "rotate", "db_password", "-"], b"rotated-by-b").ok();
    let listed = a.hush(&["secret", "ls"]);
    let row: Vec<&str> = listed.ok().lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[2], "2", "A sees B's rotation: {}", listed.stdout);
    a.hush(&["service", "create", "web", "--secret", "db_password"]).ok();

    // A node joined through A is known to B at once; its task reads through A's stream what B
    // rotates.
    let mut agent = TestAgent::join(&a);
    let nodes = b.hush(&["node", "ls"]);
    assert_eq!(nodes.ok().lines().count(), 2, "{}", nodes.stdout);
    let mut task = agent.session(&a, "web", "cat /run/secrets/db_password");
    assert_eq!(task.ask(), "rotated-by-b");
    b.hush_stdin(&["secret", "rotate", "db_password", "-"], b"third").ok();
    wait_for("B's rotation in A's agent", || (task.ask() == "third").then_some(()));

    // Removed through B: the agent, streaming from A, is cut off and exits.
    let node_id = nodes.stdout.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let removed = Instant::now();
    b.hush(&["node", "rm", &node_id]).ok();
    let status = agent.wait_exit();
    let elapsed = removed.elapsed();
    eprintln!("node removed through B: agent on A cut off after {elapsed:?}");
    assert!(!status.success() || agent.log_text().contains("removed"), "{}", agent.log_text());
    assert!(elapsed < Duration::from_secs(5), "cut off after {elapsed:?}");
    drop(task);

    // Each replica keeps its own audit chain (its own head in etcd), and each verifies.
    for replica in [&a, &b] {
        let verified = replica.hush(&["audit", "verify"]);
        verified.ok();
    }
    let heads: Vec<_> = raw_etcd(&cluster, "/ha2/audit/head/").await;
    assert_eq!(heads.len(), 2, "one chain head per replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_etcd_stops_taking_agent_streams() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("/ha3");
    let a = first_replica(&url);
    let proxy = Proxy::start(&cluster.endpoints()[0]);
    let b = second_replica(&a, &format!("etcd://{}/ha3", proxy.addr));
    a.hush_stdin(&["secret", "create", "s", "-"], b"one").ok();
    a.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let agent = TestAgent::join(&b);
    let mut task = agent.session(&b, "web", "cat /run/secrets/s");
    assert_eq!(task.ask(), "one");

    proxy.cut();
    let start = Instant::now();
    // The stream ends either at B's next health check or at its next failed store read.
    while !b.log_text().contains("assignment stream closed") {
        assert!(start.elapsed() < Duration::from_secs(20), "B log: {}\nagent log: {}", b.log_text(), agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for("B to refuse new streams", || b.log_text().contains("refusing an agent call").then_some(()));
    assert!(b.log_text().contains("lost etcd"), "{}", b.log_text());
    wait_for("the agent to notice", || agent.log_text().contains("lost the vault").then_some(()));
    // The task keeps reading what it had.
    assert_eq!(task.ask(), "one");

    proxy.restore();
    a.hush_stdin(&["secret", "rotate", "s", "-"], b"two").ok();
    wait_for("the rotation once B is back", || (task.ask() == "two").then_some(()));
}

/// Autolock: a replica started on an empty data dir is locked until `hush vault unlock` with
/// the unlock key `init` printed; then it serves what the first replica stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autolocked_replica_on_an_empty_data_dir_unlocks_with_the_unlock_key() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("/ha4");
    let mut a = TestVault::init(&["--autolock", "--store", &url]);
    let unlock_key = a.init_stdout.lines().map(str::trim).find(|l| l.starts_with("HUSHKEY-1-")).unwrap().to_string();
    a.serve_args = vec!["--store".into(), url.clone()];
    a.start();
    a.hush_stdin(&["vault", "unlock"], unlock_key.as_bytes()).ok();
    a.hush_stdin(&["secret", "create", "db_password", "-"], b"s3cr3t").ok();

    let b = second_replica(&a, &url);
    assert!(
        std::fs::read_dir(&b.data_dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("kek-"))
    );
    b.hush(&["secret", "ls"]).fails_with("locked");
    b.hush_stdin(&["vault", "unlock"], b"HUSHKEY-1-wrong").fails_with("wrong unlock key");
    b.hush_stdin(&["vault", "unlock"], unlock_key.as_bytes()).ok();
    assert!(b.hush(&["secret", "ls"]).ok().contains("db_password"));
}
