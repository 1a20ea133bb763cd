//! Leadership among replicas on a real etcd, and what the leader does: one leader at a time,
//! fenced (a leader paused past its lease is refused by etcd itself once it wakes); a killed
//! leader replaced; `hush vault members`; a node removed through one replica cut off by all;
//! an object with 200 versions removed in one transaction; pruning, cleanup and compaction
//! fenced by the leader's term.

use hush_tests::etcd::{EtcdCluster, signal};
use hush_tests::{TestAgent, TestVault, wait_for};
use hush_vault::cluster::election::{self, LEADER_KEY, LeaderRecord};
use hush_vault::jobs::{self, HEARTBEAT_KEY, Heartbeat, JobError};
use hush_vault::store::Store;
use serde_json::Value;
use std::time::{Duration, Instant};

const TTL: u64 = 3;

fn replicas(url: &str) -> Vec<TestVault> {
    TestVault::replicas_on(url, 3, &["--lease-ttl", &format!("{TTL}s")])
}

fn replica_id(vault: &TestVault) -> String {
    std::fs::read_to_string(vault.data_dir.join("replica-id")).unwrap().trim().to_string()
}

async fn client(cluster: &EtcdCluster) -> etcd_client::Client {
    etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap()
}

/// The leader key's holder and its revision (the fencing token), read in etcd.
async fn leader(etcd: &mut etcd_client::Client, prefix: &str) -> Option<(String, u64)> {
    let response = etcd.get(format!("{prefix}/{LEADER_KEY}"), None).await.unwrap();
    let kv = response.kvs().first()?;
    let record: LeaderRecord = serde_json::from_slice(kv.value()).unwrap();
    Some((record.replica, kv.mod_revision() as u64))
}

async fn wait_for_leader(etcd: &mut etcd_client::Client, prefix: &str, not: Option<&str>) -> (String, u64) {
    let start = Instant::now();
    loop {
        if let Some((id, token)) = leader(etcd, prefix).await
            && Some(id.as_str()) != not
        {
            return (id, token);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every leader heartbeat etcd accepted, in revision order (etcd's history of the key).
async fn heartbeats(etcd: &mut etcd_client::Client, prefix: &str) -> Vec<(i64, Heartbeat)> {
    let key = format!("{prefix}/{HEARTBEAT_KEY}");
    let last = etcd.get(key.as_str(), None).await.unwrap().kvs()[0].mod_revision();
    let options = etcd_client::WatchOptions::new().with_start_revision(1);
    let mut stream = etcd.watch(key.as_str(), Some(options)).await.unwrap();
    let mut seen = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        for event in response.events() {
            let kv = event.kv().unwrap();
            seen.push((kv.mod_revision(), serde_json::from_slice(kv.value()).unwrap()));
            if kv.mod_revision() >= last {
                return seen;
            }
        }
    }
    panic!("history of {key} ended early");
}

fn members(vault: &TestVault) -> Value {
    serde_json::from_str(vault.hush(&["vault", "members", "--format", "json"]).ok()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_fenced_and_replaced_when_it_dies() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(3);
    let prefix = "/hl1";
    let mut vaults = replicas(&cluster.url(prefix));
    let ids: Vec<String> = vaults.iter().map(replica_id).collect();
    let mut etcd = client(&cluster).await;
    let (first, first_token) = wait_for_leader(&mut etcd, prefix, None).await;
    let leading = ids.iter().position(|id| *id == first).expect("a replica leads");

    // `vault members` through another replica: three replicas, one leader, three etcd members.
    let asked = (leading + 1) % 3;
    let listing = wait_for("every replica listed", || {
        let listing = members(&vaults[asked]);
        (listing["Replicas"].as_array().unwrap().len() == 3).then_some(listing)
    });
    assert_eq!(listing["Store"], cluster.url(prefix));
    for (vault, id) in vaults.iter().zip(&ids) {
        let row = listing["Replicas"].as_array().unwrap().iter().find(|r| r["ID"] == id.as_str()).unwrap();
        assert_eq!(row["Address"], vault.addr.as_str());
        assert_eq!(row["Status"], "Ready");
        assert_eq!(row["Leader"], *id == first, "{listing}");
        assert_eq!(row["Self"], *id == ids[asked]);
    }
    let etcd_rows = listing["Etcd"].as_array().unwrap();
    assert_eq!(etcd_rows.len(), 3);
    assert!(etcd_rows.iter().all(|e| e["Health"] == "healthy" && e["Version"].as_str().unwrap().starts_with("3.")));
    assert_eq!(etcd_rows.iter().filter(|e| e["Leader"] == true).count(), 1, "{listing}");
    let table = vaults[asked].hush(&["vault", "members"]);
    let lines: Vec<&str> = table.ok().lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("LAST HEARTBEAT"), "{}", table.stdout);
    assert_eq!(lines[1..4].iter().filter(|l| l.contains("Leader")).count(), 1, "{}", table.stdout);
    assert!(lines[1..4].iter().any(|l| l.starts_with(&format!("{} *", ids[asked]))), "{}", table.stdout);
    assert!(lines[5].starts_with("ETCD ENDPOINT") && lines[6..9].iter().all(|l| l.contains("healthy")));

    // Pause the leader past its lease: another replica takes over.
    signal(vaults[leading].pid(), rustix::process::Signal::STOP);
    let (second, second_token) = wait_for_leader(&mut etcd, prefix, Some(&first)).await;
    assert!(second_token > first_token);
    // Wake the old leader: its next singleton write carries its old token, and etcd refuses it.
    signal(vaults[leading].pid(), rustix::process::Signal::CONT);
    let refusal = format!("fencing token {first_token} refused");
    wait_for("the old leader's fenced write refused", || vaults[leading].log_text().contains(&refusal).then_some(()));
    assert_eq!(
        leader(&mut etcd, prefix).await.unwrap(),
        (second.clone(), second_token),
        "the old leader took nothing back"
    );
    // In etcd's own history: every accepted heartbeat was fenced by the term that led when it
    // was written; tokens never go back, and none of the old term after the new one's first.
    let beats = heartbeats(&mut etcd, prefix).await;
    assert!(beats.iter().any(|(_, b)| b.token == first_token) && beats.iter().any(|(_, b)| b.token == second_token));
    assert!(beats.windows(2).all(|w| w[0].1.token <= w[1].1.token), "{beats:?}");
    for (_, beat) in &beats {
        let holder = if beat.token == first_token { &first } else { &second };
        assert_eq!(&beat.replica, holder, "{beats:?}");
    }
    let old_leader_log = vaults[leading].log_text();
    assert!(old_leader_log.contains(&format!("this replica leads: fencing token {first_token}")));

    // kill -9 the leader: another takes over within about a lease TTL.
    let killed = ids.iter().position(|id| *id == second).unwrap();
    vaults[killed].kill9();
    let since = Instant::now();
    let (third, _) = wait_for_leader(&mut etcd, prefix, Some(&second)).await;
    let took_over = since.elapsed();
    eprintln!("leader killed: replica {third} leads after {took_over:?} (lease TTL {TTL} s)");
    assert!(took_over < Duration::from_secs(TTL + 3), "took over after {took_over:?}");

    // `vault members` after it died: listed as Down, not leading; the others Ready.
    let live = (0..3).find(|&i| i != killed).unwrap();
    let listing = wait_for("the dead replica Down", || {
        let listing = members(&vaults[live]);
        let rows = listing["Replicas"].as_array().unwrap().clone();
        rows.iter().any(|r| r["ID"] == second.as_str() && r["Status"] == "Down").then_some(listing)
    });
    for row in listing["Replicas"].as_array().unwrap() {
        let dead = row["ID"] == second.as_str();
        assert_eq!(row["Status"], if dead { "Down" } else { "Ready" }, "{listing}");
        assert_eq!(row["Leader"], row["ID"] == third.as_str(), "{listing}");
    }
}

/// A node removed through one replica is refused by every replica at once: its stream on
/// another replica ends, its task loses its files, and a restart of the agent against a third
/// replica is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_through_one_replica_is_cut_off_by_all() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(1);
    let vaults = replicas(&cluster.url("/hl2"));
    let (a, b, c) = (&vaults[0], &vaults[1], &vaults[2]);
    a.hush_stdin(&["secret", "create", "s", "-"], b"one").ok();
    a.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let mut agent = TestAgent::join(a);
    let mut task = agent.session(a, "web", "cat /run/secrets/s 2>/dev/null || echo gone");
    assert_eq!(task.ask(), "one");
    let node = b.hush(&["node", "ls", "-q"]).ok().trim().to_string();

    let removed = Instant::now();
    b.hush(&["node", "rm", &node]).ok();
    let status = agent.wait_exit();
    let exited = removed.elapsed();
    assert!(!status.success());
    assert!(agent.log_text().contains("removed from the vault"), "{}", agent.log_text());
    wait_for("A to end the node's stream", || a.log_text().contains("has been removed from this vault").then_some(()));
    eprintln!("node removed through B: its agent on A was cut off and had exited {exited:?} after `node rm` began");
    assert!(exited < Duration::from_secs(5), "{exited:?}");
    drop(task);

    // The node's certificate, presented to a third replica, is refused.
    let before = agent.log_text().len();
    if agent.start(&["--vault", &c.addr]).is_ok() {
        assert!(!agent.wait_exit().success());
    }
    let again = agent.log_text()[before..].to_string();
    assert!(again.contains("has been removed from this vault"), "{again}");
}

/// An object with more versions than etcd's 128 operations per transaction is removed in one
/// transaction: watchers see every version go at one revision, and nothing is left in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_with_200_versions_is_removed_at_once() {
    use hush_vault::model::Kind;
    let cluster = EtcdCluster::start(1);
    let store = std::sync::Arc::new(
        hush_vault::store::etcd::EtcdStore::connect(
            &hush_vault::store::etcd::EtcdConfig::parse(&cluster.url("/hl3")).unwrap(),
        )
        .await
        .unwrap(),
    );
    let objects =
        std::sync::Arc::new(hush_vault::objects::Objects::new(store.clone(), hush_vault::crypto::Key::random()));
    let data = |v: u32| hush_vault::secret::SecretBytes::new(format!("v{v}").into_bytes());
    let record = objects.create(Kind::Secret, "many", Default::default(), data(1)).await.unwrap();
    for v in 2..=200 {
        objects.rotate(Kind::Secret, "many", data(v)).await.unwrap();
    }
    let prefix = format!("secret/data/{}/", record.id);
    assert_eq!(store.range(&prefix).await.unwrap().entries.len(), 200);
    let mut changes = store.subscribe();
    let services = hush_vault::services::Services::new(objects.clone());
    let services = &services;
    let in_use = |r: hush_vault::model::ObjectRecord| async move { services.users_of(Kind::Secret, &r.id).await };
    objects.remove(Kind::Secret, "many", in_use).await.unwrap();
    let change = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap();
    let deleted = change.ops.iter().filter(|op| op.key().starts_with(&prefix)).count();
    assert_eq!(deleted, 200, "every version goes in the one change");
    assert!(store.range(&prefix).await.unwrap().entries.is_empty());
    let mut etcd = client(&cluster).await;
    let raw = etcd.get(format!("/hl3/{prefix}"), Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(raw.kvs().len(), 0, "nothing left in etcd");
    assert!(objects.find(Kind::Secret, "many").await.is_err());
}

/// The jobs, on a real etcd: a stale term prunes, cleans and compacts nothing; the current one
/// keeps the newest versions, removes a dead node's leftover task, and compacts history to
/// the revision of its previous round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singleton_jobs_are_fenced_by_the_leaders_term() {
    use hush_vault::model::Kind;
    let cluster = EtcdCluster::start(1);
    let config = hush_vault::store::etcd::EtcdConfig::parse(&cluster.url("/hl4")).unwrap();
    let store = std::sync::Arc::new(hush_vault::store::etcd::EtcdStore::connect(&config).await.unwrap());
    let key = hush_vault::crypto::Key::random();
    let objects = hush_vault::objects::Objects::new(store.clone(), key.clone());
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = hush_vault::audit::AuditLog::open(audit_dir.path(), store.clone(), Some(&key)).unwrap();
    let data = |v: u32| hush_vault::secret::SecretBytes::new(format!("v{v}").into_bytes());
    objects.create(Kind::Secret, "s", Default::default(), data(1)).await.unwrap();
    for v in 2..=15 {
        objects.rotate(Kind::Secret, "s", data(v)).await.unwrap();
    }
    let orphan = hush_vault::tasks::TaskRecord {
        id: "t-orphan".into(),
        name: "web.1".into(),
        service_id: "gone".into(),
        service_name: "web".into(),
        node_id: "removed-node".into(),
        created_at: chrono::Utc::now(),
        container: None,
    };
    store
        .commit(hush_vault::store::Txn::new().put("task/t-orphan", serde_json::to_vec(&orphan).unwrap()))
        .await
        .unwrap();
    let record =
        |id: &str| LeaderRecord { replica: id.into(), address: "127.0.0.1:1".into(), since: Default::default() };
    let stale = election::lead_alone(store.as_ref(), &record("old")).await.unwrap();
    let current = election::lead_alone(store.as_ref(), &record("new")).await.unwrap();
    let later = chrono::Utc::now() + chrono::TimeDelta::hours(1);

    // The stale term: refused in etcd, nothing changed.
    let refused = jobs::prune::run(&objects, &audit, "old", 10, later, stale).await;
    assert!(matches!(refused, Err(JobError::Fenced)), "{refused:?}");
    let refused = jobs::cleanup::run(store.as_ref(), "old", later, stale, |_| async { false }).await;
    assert!(matches!(refused, Err(JobError::Fenced)), "{refused:?}");
    assert_eq!(objects.find(Kind::Secret, "s").await.unwrap().record.versions.len(), 15);
    assert!(store.get("task/t-orphan").await.unwrap().is_some());

    // The current term: the newest 10 versions stay (all readable), the rest go; the orphan goes.
    jobs::prune::run(&objects, &audit, "new", 10, later, current).await.unwrap();
    let kept = objects.find(Kind::Secret, "s").await.unwrap().record;
    assert_eq!(kept.versions.iter().map(|v| v.version).collect::<Vec<_>>(), (6..=15).collect::<Vec<u64>>());
    for v in 6..=15 {
        assert_eq!(
            objects.open_version(Kind::Secret, &kept, v).await.unwrap().expose_secret(),
            format!("v{v}").as_bytes()
        );
    }
    assert_eq!(store.range(&format!("secret/data/{}/", kept.id)).await.unwrap().entries.len(), 10);
    jobs::cleanup::run(store.as_ref(), "new", later, current, |_| async { false }).await.unwrap();
    assert!(store.get("task/t-orphan").await.unwrap().is_none());

    // Compaction: each round compacts to the revision of the round before; a stale term none.
    let etcd = store.client();
    let mut compactor = jobs::compact::Compactor::new(Some(Duration::ZERO));
    assert_eq!(compactor.tick(store.as_ref(), &etcd, "new", current).await.unwrap(), None);
    let first_round = store.get(jobs::compact::COMPACTION_KEY).await.unwrap().unwrap().mod_revision;
    let compacted = compactor.tick(store.as_ref(), &etcd, "new", current).await.unwrap();
    assert_eq!(compacted, Some(first_round));
    let mut raw = client(&cluster).await;
    let old =
        raw.get("/hl4/task/t-orphan", Some(etcd_client::GetOptions::new().with_revision(first_round as i64 - 1))).await;
    assert!(old.is_err_and(|e| e.to_string().contains("compacted")), "history before the round is gone");
    let mut stale_compactor = jobs::compact::Compactor::new(Some(Duration::ZERO));
    assert!(matches!(stale_compactor.tick(store.as_ref(), &etcd, "old", stale).await, Err(JobError::Fenced)));
}
