//! One contract, two stores: every check here runs against the embedded redb store and against
//! a real etcd (Debian's etcd-server, started on loopback). Then what only etcd can show: a
//! watch that resumes after its connection is cut, recovery from compaction by re-listing, and
//! writes that continue when the etcd leader is killed.

use hush_tests::etcd::EtcdCluster;
use hush_tests::proxy::Proxy;
use hush_vault::store::etcd::{EtcdConfig, EtcdStore};
use hush_vault::store::redb::RedbStore;
use hush_vault::store::{Change, Expect, Op, Store, StoreError, Txn};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Every check of the contract, each given a fresh, empty store.
async fn contract<F, Fut>(fresh: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    revisions_increase_and_entries_remember_theirs(fresh("revisions").await).await;
    a_failed_check_writes_nothing_and_names_the_key(fresh("checks").await).await;
    range_is_prefix_bounded_ordered_and_complete(fresh("range").await).await;
    concurrent_creates_are_isolated(fresh("concurrent").await).await;
    watchers_see_each_change_once_in_order(fresh("watch").await).await;
    list_then_watch_misses_nothing(fresh("list-watch").await).await;
    last_operation_on_a_key_wins(fresh("last-op").await).await;
    large_values_round_trip(fresh("large").await).await;
    usable_from_a_plain_thread(fresh("thread").await).await;
    a_prefix_delete_is_one_operation(fresh("prefix-delete").await).await;
}

async fn revisions_increase_and_entries_remember_theirs(store: Arc<dyn Store>) {
    assert!(store.get("a").await.unwrap().is_none());
    let r1 = store.commit(Txn::new().put("a", b"1".to_vec())).await.unwrap();
    let r2 = store.commit(Txn::new().put("b", b"2".to_vec())).await.unwrap();
    assert!(r2 > r1, "{r2} > {r1}");
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!((a.key.as_str(), a.value.as_slice(), a.mod_revision), ("a", b"1".as_slice(), r1));
    assert!(store.range("").await.unwrap().revision >= r2);
    let r3 = store.commit(Txn::new().delete("a")).await.unwrap();
    assert!(r3 > r2);
    assert!(store.get("a").await.unwrap().is_none());
}

async fn a_failed_check_writes_nothing_and_names_the_key(store: Arc<dyn Store>) {
    let r1 = store.commit(Txn::new().check("a", Expect::Absent).put("a", b"1".to_vec())).await.unwrap();
    let err = store
        .commit(
            Txn::new().check("z", Expect::Absent).check("a", Expect::Absent).put("a", b"2".to_vec()).put("b", vec![1]),
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::Conflict { key } if key == "a"), "{err}");
    assert_eq!(store.get("a").await.unwrap().unwrap().value, b"1");
    assert!(store.get("b").await.unwrap().is_none());
    // Compare-and-swap on the revision read: the first writer wins, the second conflicts.
    let r2 = store.commit(Txn::new().check("a", Expect::At(r1)).put("a", b"3".to_vec())).await.unwrap();
    let stale = store.commit(Txn::new().check("a", Expect::At(r1)).delete("a")).await.unwrap_err();
    assert!(matches!(&stale, StoreError::Conflict { key } if key == "a"), "{stale}");
    // A missing key never matches a revision; a deleted key is absent again.
    assert!(store.commit(Txn::new().check("nope", Expect::At(r2)).put("x", vec![1])).await.is_err());
    store.commit(Txn::new().check("a", Expect::At(r2)).delete("a")).await.unwrap();
    store.commit(Txn::new().check("a", Expect::Absent).put("a", b"again".to_vec())).await.unwrap();
}

async fn range_is_prefix_bounded_ordered_and_complete(store: Arc<dyn Store>) {
    for key in ["p/b", "p/a", "q/a", "p", "p0"] {
        store.commit(Txn::new().put(key, vec![1])).await.unwrap();
    }
    let keys: Vec<_> = store.range("p/").await.unwrap().entries.into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["p/a", "p/b"]);
    // More keys than one etcd page, written in several transactions: all listed, in order.
    let mut expected = BTreeSet::new();
    for batch in 0..25 {
        let mut txn = Txn::new();
        for i in 0..100 {
            let key = format!("many/{:05}", batch * 100 + i);
            expected.insert(key.clone());
            txn = txn.put(key, vec![7; 64]);
        }
        store.commit(txn).await.unwrap();
    }
    let snapshot = store.range("many/").await.unwrap();
    let listed: Vec<String> = snapshot.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(listed, expected.into_iter().collect::<Vec<_>>());
    assert!(snapshot.entries.iter().all(|e| e.mod_revision <= snapshot.revision));
}

async fn concurrent_creates_are_isolated(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        // Half of them race for the same key: exactly one may win.
        let key = if i % 2 == 0 { format!("k{i}") } else { "contended".to_string() };
        tasks.push(tokio::spawn(async move {
            store.commit(Txn::new().check(key.clone(), Expect::Absent).put(key, vec![1])).await
        }));
    }
    let mut revisions = BTreeSet::new();
    for task in tasks {
        if let Ok(revision) = task.await.unwrap() {
            assert!(revisions.insert(revision), "revision {revision} given twice");
        }
    }
    assert_eq!(revisions.len(), 101);
    assert_eq!(store.range("").await.unwrap().entries.len(), 101);
}

/// The next change, or a panic after a few seconds.
async fn next(changes: &mut broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(20), changes.recv()).await.expect("a change in time").expect("open")
}

/// No further change arrives for a little while.
async fn quiet(changes: &mut broadcast::Receiver<Change>) {
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), changes.recv()).await {
        panic!("unexpected change: {extra:?}");
    }
}

async fn watchers_see_each_change_once_in_order(store: Arc<dyn Store>) {
    let mut changes = store.subscribe();
    let r1 = store.commit(Txn::new().put("a", vec![1]).put("b", vec![2])).await.unwrap();
    let r2 = store.commit(Txn::new().delete("a")).await.unwrap();
    let first = next(&mut changes).await;
    assert_eq!(first.revision, r1);
    let mut ops = first.ops.clone();
    ops.sort_by(|x, y| x.key().cmp(y.key()));
    assert_eq!(ops, [Op::Put { key: "a".into(), value: vec![1] }, Op::Put { key: "b".into(), value: vec![2] }]);
    let second = next(&mut changes).await;
    assert_eq!((second.revision, second.ops), (r2, vec![Op::Delete { key: "a".into() }]));
    // A transaction whose check failed is not a change.
    let _ = store.commit(Txn::new().check("b", Expect::Absent).put("b", vec![3])).await.unwrap_err();
    quiet(&mut changes).await;
}

async fn list_then_watch_misses_nothing(store: Arc<dyn Store>) {
    store.commit(Txn::new().put("before", vec![1])).await.unwrap();
    let mut changes = store.subscribe();
    let during = store.commit(Txn::new().put("during", vec![1])).await.unwrap();
    let snapshot = store.range("").await.unwrap();
    assert!(snapshot.revision >= during);
    let after = store.commit(Txn::new().put("after", vec![1])).await.unwrap();
    // Skip what the snapshot holds; what remains is exactly the later change.
    loop {
        let change = next(&mut changes).await;
        if change.revision <= snapshot.revision {
            continue;
        }
        assert_eq!(change.revision, after);
        assert_eq!(change.ops, [Op::Put { key: "after".into(), value: vec![1] }]);
        break;
    }
}

async fn last_operation_on_a_key_wins(store: Arc<dyn Store>) {
    store.commit(Txn::new().put("k", vec![1]).delete("k")).await.unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    store.commit(Txn::new().delete("k").put("k", vec![2]).put("k", vec![3])).await.unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().value, [3]);
}

/// More keys than etcd takes operations in one transaction (128) go in one prefix delete,
/// all or nothing, and watchers see each key deleted at one revision.
async fn a_prefix_delete_is_one_operation(store: Arc<dyn Store>) {
    for chunk in (0..300).collect::<Vec<u32>>().chunks(100) {
        let txn = chunk.iter().fold(Txn::new(), |txn, i| txn.put(format!("p/{i:04}"), vec![1]));
        store.commit(txn).await.unwrap();
    }
    let guard = store.commit(Txn::new().put("guard", vec![1]).put("pq", vec![1])).await.unwrap();
    // A failed check deletes nothing.
    let stale = Txn::new().check("guard", Expect::At(guard + 1)).delete_prefix("p/");
    assert!(matches!(store.commit(stale).await, Err(StoreError::Conflict { .. })));
    assert_eq!(store.range("p/").await.unwrap().entries.len(), 300);
    let mut changes = store.subscribe();
    let revision = store.commit(Txn::new().check("guard", Expect::At(guard)).delete_prefix("p/")).await.unwrap();
    assert!(store.range("p/").await.unwrap().entries.is_empty());
    assert!(store.get("pq").await.unwrap().is_some(), "only keys under the prefix");
    // A subscription may still deliver changes committed before it (etcd's watch lags the
    // commits; consumers skip what their range already holds): skip to this one.
    let mut change = next(&mut changes).await;
    while change.revision < revision {
        change = next(&mut changes).await;
    }
    assert_eq!(change.revision, revision);
    let deleted: BTreeSet<String> = change
        .ops
        .iter()
        .map(|op| match op {
            Op::Delete { key } => key.clone(),
            other => panic!("watchers see deletes only: {other:?}"),
        })
        .collect();
    assert_eq!(deleted, (0..300).map(|i| format!("p/{i:04}")).collect::<BTreeSet<_>>());
}

async fn large_values_round_trip(store: Arc<dyn Store>) {
    // A config at Docker's cap, sealed (a little larger than its plaintext).
    let value: Vec<u8> = (0..1_024_100u32).map(|i| (i % 251) as u8).collect();
    store.commit(Txn::new().put("big", value.clone())).await.unwrap();
    assert_eq!(store.get("big").await.unwrap().unwrap().value, value);
}

async fn usable_from_a_plain_thread(store: Arc<dyn Store>) {
    // The audit writer calls the store from its own thread, outside the runtime.
    let thread_store = store.clone();
    let revision = std::thread::spawn(move || {
        futures::executor::block_on(thread_store.commit(Txn::new().put("from-thread", vec![1])))
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(store.get("from-thread").await.unwrap().unwrap().mod_revision, revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    contract(|name| {
        let path = root.join(format!("{name}.redb"));
        async move { Arc::new(RedbStore::open(&path).unwrap()) as Arc<dyn Store> }
    })
    .await;
}

async fn etcd_store(url: &str) -> EtcdStore {
    EtcdStore::connect(&EtcdConfig::parse(url).unwrap()).await.unwrap()
}

/// One etcd for the contract and the etcd-only checks (each under its own prefix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_meets_the_contract_and_recovers() {
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("");
    contract(|name| {
        let url = format!("{url}/contract/{name}");
        async move { Arc::new(etcd_store(&url).await) as Arc<dyn Store> }
    })
    .await;

    prefixes_do_not_mix(&cluster).await;
    a_cut_watch_resumes_without_loss_or_repeats(&cluster).await;
    compaction_is_recovered_by_relisting(&cluster).await;
}

async fn prefixes_do_not_mix(cluster: &EtcdCluster) {
    let a = etcd_store(&cluster.url("/team/a")).await;
    let b = etcd_store(&cluster.url("/team/ab")).await;
    a.commit(Txn::new().put("k", vec![1])).await.unwrap();
    b.commit(Txn::new().put("k", vec![2])).await.unwrap();
    assert_eq!(a.range("").await.unwrap().entries.len(), 1);
    assert_eq!(a.get("k").await.unwrap().unwrap().value, [1]);
}

/// The store's connection goes through a proxy; while it is cut, another client writes.
async fn a_cut_watch_resumes_without_loss_or_repeats(cluster: &EtcdCluster) {
    let proxy = Proxy::start(&cluster.endpoints()[0]);
    let watched = etcd_store(&format!("etcd://{}/resume", proxy.addr)).await;
    let writer = etcd_store(&cluster.url("/resume")).await;
    let mut changes = watched.subscribe();
    let mut expected = vec![writer.commit(Txn::new().put("k", b"0".to_vec())).await.unwrap()];
    assert_eq!(next(&mut changes).await.revision, expected[0]);

    proxy.cut();
    for i in 1..=20u8 {
        expected.push(writer.commit(Txn::new().put("k", vec![i])).await.unwrap());
    }
    hush_tests::wait_for("the store to notice", || Store::health(&watched).is_err().then_some(()));
    proxy.restore();
    let mut seen = vec![expected[0]];
    while seen.len() < expected.len() {
        seen.push(next(&mut changes).await.revision);
    }
    assert_eq!(seen, expected, "every revision once, in order");
    quiet(&mut changes).await;
    hush_tests::wait_for("the store to recover", || Store::health(&watched).is_ok().then_some(()));
}

/// While the store cannot reach etcd, keys change and history is compacted away: when it is
/// back, one change carries the difference, read from a fresh listing.
async fn compaction_is_recovered_by_relisting(cluster: &EtcdCluster) {
    let proxy = Proxy::start(&cluster.endpoints()[0]);
    let watched = etcd_store(&format!("etcd://{}/compact", proxy.addr)).await;
    let writer = etcd_store(&cluster.url("/compact")).await;
    let mut changes = watched.subscribe();
    writer.commit(Txn::new().put("stays", vec![1]).put("goes", vec![1]).put("changes", vec![1])).await.unwrap();
    next(&mut changes).await;

    proxy.cut();
    writer.commit(Txn::new().delete("goes").put("changes", vec![2])).await.unwrap();
    let last = writer.commit(Txn::new().put("new", vec![3])).await.unwrap();
    let mut client = writer.client();
    client.compact(last as i64, None).await.unwrap();
    proxy.restore();

    let change = next(&mut changes).await;
    assert!(change.revision >= last);
    let mut ops = change.ops;
    ops.sort_by(|x, y| x.key().cmp(y.key()));
    assert_eq!(
        ops,
        [
            Op::Put { key: "changes".into(), value: vec![2] },
            Op::Delete { key: "goes".into() },
            Op::Put { key: "new".into(), value: vec![3] },
        ]
    );
    quiet(&mut changes).await;
    // And it keeps following after the re-list.
    let after = writer.commit(Txn::new().put("later", vec![4])).await.unwrap();
    assert_eq!(next(&mut changes).await.revision, after);
}

/// Three members; the leader is killed while writes go on: writes resume on the new leader
/// and the watch delivers every acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_writes_survive_the_leader_being_killed() {
    let mut cluster = EtcdCluster::start(3);
    let store = Arc::new(etcd_store(&cluster.url("/leader")).await);
    let mut changes = store.subscribe();
    let mut acknowledged = Vec::new();
    for i in 0..20u32 {
        acknowledged.push(store.commit(Txn::new().put(format!("k{i}"), vec![1])).await.unwrap());
    }
    let leader = cluster.leader().expect("a leader");
    cluster.kill9(leader);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for i in 20..60u32 {
        loop {
            match store.commit(Txn::new().check(format!("k{i}"), Expect::Absent).put(format!("k{i}"), vec![1])).await {
                Ok(revision) => {
                    acknowledged.push(revision);
                    break;
                }
                // An attempt that timed out may have committed: the create-only check says so.
                Err(StoreError::Conflict { .. }) => {
                    acknowledged.push(store.get(&format!("k{i}")).await.unwrap().unwrap().mod_revision);
                    break;
                }
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "writes did not resume: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    assert_ne!(cluster.wait_for_leader(), leader);
    assert_eq!(store.range("").await.unwrap().entries.len(), 60);
    let mut seen = Vec::new();
    while seen.len() < acknowledged.len() {
        seen.push(next(&mut changes).await.revision);
    }
    assert_eq!(seen, acknowledged);
}
