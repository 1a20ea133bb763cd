//! The audit log of replicas on etcd (a real etcd on loopback): `hush audit` on any replica
//! merges every replica's chain in time order with its filters and `--follow`; `hush audit
//! verify` checks every chain and the checkpoints linking them, and names the replica whose
//! chain was edited, cut or removed directly in etcd.

use hush_tests::etcd::EtcdCluster;
use hush_tests::{TestVault, wait_for};
use serde_json::Value;
use std::io::BufRead;

const PREFIX: &str = "/haudit";

fn with_checkpoints(vault: &mut TestVault) {
    vault.env.push(("HUSH_AUDIT_CHECKPOINT_MS".into(), "200".into()));
}

fn replicas(url: &str) -> Vec<TestVault> {
    let mut a = TestVault::init(&["--store", url]);
    a.serve_args = vec!["--store".into(), url.into()];
    with_checkpoints(&mut a);
    a.start();
    let mut all = vec![a];
    for _ in 0..2 {
        let mut replica = TestVault::replica_of(&all[0]);
        replica.serve_args = vec!["--store".into(), url.into()];
        with_checkpoints(&mut replica);
        replica.start();
        all.push(replica);
    }
    all
}

fn replica_id(vault: &TestVault) -> String {
    std::fs::read_to_string(vault.data_dir.join("replica-id")).unwrap().trim().to_string()
}

fn entries(vault: &TestVault, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "--format", "json"];
    args.extend_from_slice(filters);
    serde_json::from_str::<Vec<Value>>(vault.hush(&args).ok()).unwrap()
}

fn text<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry.get(key).and_then(Value::as_str).unwrap_or_default()
}

async fn client(cluster: &EtcdCluster) -> etcd_client::Client {
    etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap()
}

/// Every (key, value) of one replica's chain segments, in order.
async fn segments(cluster: &EtcdCluster, replica: &str) -> Vec<(String, Vec<u8>)> {
    let prefix = format!("{PREFIX}.logs/audit/{replica}/");
    let got = client(cluster).await.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    got.kvs().iter().map(|kv| (kv.key_str().unwrap().to_string(), kv.value().to_vec())).collect()
}

fn head_key(replica: &str) -> String {
    format!("{PREFIX}/audit/head/{replica}")
}

async fn get(cluster: &EtcdCluster, key: &str) -> Option<Vec<u8>> {
    client(cluster).await.get(key, None).await.unwrap().kvs().first().map(|kv| kv.value().to_vec())
}

async fn put(cluster: &EtcdCluster, key: &str, value: Vec<u8>) {
    client(cluster).await.put(key, value, None).await.unwrap();
}

fn verify_fails(vault: &TestVault, needles: &[&str]) {
    let run = vault.hush(&["audit", "verify"]);
    let err = run.fails_with("audit log tampered");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

/// Waits until every replica's checkpoint has recorded the newest activity of the others.
fn wait_for_links(vault: &TestVault, links: u32) {
    wait_for("checkpoints linking the chains", || {
        let run = vault.hush(&["audit", "verify"]);
        let out = run.ok().to_string();
        let n: u32 = out.split(" cross-link").next()?.rsplit(' ').next()?.parse().ok()?;
        (n >= links).then_some(out)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_merges_every_replica_chain_and_verify_names_the_one_tampered_with() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(1);
    let url = cluster.url(PREFIX);
    let mut vaults = replicas(&url);
    let ids: Vec<String> = vaults.iter().map(replica_id).collect();
    let (a, b, c) = (&vaults[0], &vaults[1], &vaults[2]);

    // Interleaved writes through all three replicas.
    a.hush_stdin(&["secret", "create", "s1", "-"], b"one").ok();
    b.hush_stdin(&["secret", "create", "s2", "-"], b"two").ok();
    c.hush_stdin(&["secret", "rotate", "s1", "-"], b"one-v2").ok();
    a.hush_stdin(&["config", "create", "c1", "-"], b"conf").ok();
    b.hush_stdin(&["secret", "rotate", "s2", "-"], b"two-v2").ok();
    c.hush_stdin(&["secret", "rotate", "s1", "-"], b"one-v3").ok();
    let old_head_c = get(&cluster, &head_key(&ids[2])).await.unwrap();
    c.hush(&["service", "create", "web", "--secret", "s1"]).ok();
    c.hush(&["secret", "inspect", "s1"]).ok();

    // Any replica answers with every replica's entries, in time order.
    for vault in [a, b, c] {
        let all = entries(vault, &[]);
        let times: Vec<&str> = all.iter().map(|e| text(e, "time")).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "not in time order: {times:?}");
        for id in &ids {
            assert!(all.iter().any(|e| text(e, "replica") == id), "no entry of replica {id}");
        }
        let ops: Vec<(&str, &str)> =
            all.iter().filter(|e| text(e, "op") != "checkpoint").map(|e| (text(e, "op"), text(e, "replica"))).collect();
        let expected = [
            ("create", ids[0].as_str()),
            ("create", &ids[1]),
            ("rotate", &ids[2]),
            ("create", &ids[0]),
            ("rotate", &ids[1]),
            ("rotate", &ids[2]),
            ("service_create", &ids[2]),
            ("inspect", &ids[2]),
        ];
        assert_eq!(ops, expected, "merged log");
    }
    // Filters apply to the merged log.
    let s1 = entries(b, &["--secret", "s1"]);
    let ops: Vec<&str> = s1.iter().map(|e| text(e, "op")).collect();
    assert_eq!(ops, ["create", "rotate", "rotate", "inspect"]);
    assert!(s1.iter().all(|e| text(e, "secret") == "s1"));
    assert_eq!(entries(a, &["--config", "c1"]).len(), 1);
    assert!(entries(a, &["--secret", "s1", "--until", "2000-01-01T00:00:00Z"]).is_empty());

    // --follow on A sees what B and C write next.
    let mut follow = a.command();
    follow.args(["audit", "--follow", "--format", "json", "--secret", "s2"]);
    let mut follower = follow.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();
    for expected in ["create", "rotate"] {
        let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(text(&line, "op"), expected);
    }
    c.hush_stdin(&["secret", "rotate", "s2", "-"], b"two-v3").ok();
    b.hush(&["secret", "inspect", "s2"]).ok();
    for (op, replica) in [("rotate", &ids[2]), ("inspect", &ids[1])] {
        let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!((text(&line, "op"), text(&line, "replica")), (op, replica.as_str()));
    }
    let _ = follower.kill();
    let _ = follower.wait();

    // Every chain verifies, and each replica's checkpoints name the other two.
    wait_for_links(b, 6);
    let out = b.hush(&["audit", "verify"]);
    assert!(out.ok().contains("in 3 chains"), "{}", out.stdout);

    // C stops once A has recorded it past the head replayed below; then its chain is
    // tampered with in etcd, one way at a time.
    let old_seq = serde_json::from_slice::<Value>(&old_head_c).unwrap()["seq"].as_u64().unwrap();
    wait_for("A's checkpoint of C's newer entries", || {
        entries(a, &[])
            .iter()
            .any(|e| {
                text(e, "op") == "checkpoint"
                    && text(e, "replica") == ids[0]
                    && e["heads"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|h| h["replica"] == ids[2] && h["seq"].as_u64() > Some(old_seq))
            })
            .then_some(())
    });
    vaults[2].stop();
    let (a, b) = (&vaults[0], &vaults[1]);
    let chain_c = segments(&cluster, &ids[2]).await;
    let head_c = get(&cluster, &head_key(&ids[2])).await.unwrap();

    // An entry edited in place.
    let (key, value) = chain_c[0].clone();
    let edited = String::from_utf8(value.clone()).unwrap().replacen("\"s1\"", "\"s9\"", 1);
    put(&cluster, &key, edited.into_bytes()).await;
    verify_fails(a, &[&format!("replica {}", ids[2]), "MAC does not verify"]);
    put(&cluster, &key, value).await;
    assert!(a.hush(&["audit", "verify"]).ok().contains("in 3 chains"));

    // Cut from the end: the last segment removed.
    let (last_key, last_value) = chain_c.last().unwrap().clone();
    client(&cluster).await.delete(last_key.clone(), None).await.unwrap();
    verify_fails(b, &[&format!("replica {}", ids[2]), "removed from the end"]);
    // ... and an older, authentic head put back to hide it: the others' checkpoints tell.
    for (key, _) in &chain_c {
        let first: u64 = key.rsplit('/').next().unwrap().parse().unwrap();
        if first > old_seq {
            client(&cluster).await.delete(key.clone(), None).await.unwrap();
        }
    }
    put(&cluster, &head_key(&ids[2]), old_head_c.clone()).await;
    verify_fails(b, &[&format!("replica {}", ids[2]), "checkpoint", "removed from the end"]);

    // The whole chain removed, head and all.
    client(&cluster)
        .await
        .delete(format!("{PREFIX}.logs/audit/{}/", ids[2]), Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    client(&cluster).await.delete(head_key(&ids[2]), None).await.unwrap();
    verify_fails(a, &[&format!("replica {}", ids[2]), "chain is gone"]);

    // Put back as it was: verify passes again.
    for (key, value) in chain_c {
        put(&cluster, &key, value).await;
    }
    let _ = last_value;
    put(&cluster, &head_key(&ids[2]), head_c).await;
    assert!(a.hush(&["audit", "verify"]).ok().contains("in 3 chains"));
}
