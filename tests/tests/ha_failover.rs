//! Unary calls fail over as the assignment stream does: an agent whose replica is cut off from
//! etcd still starts a new task (StartTask) and ends it (EndTask) through another replica of its
//! `--vault` list, and the task gets its files. `hush audit verify` there says the log could not
//! be read, never that it was tampered.

use hush_tests::etcd::EtcdCluster;
use hush_tests::proxy::Proxy;
use hush_tests::{TestAgent, TestVault, wait_for};

/// The replica whose log shows an assignment stream that is still open.
fn serving(vaults: &[TestVault]) -> Option<usize> {
    vaults.iter().position(|v| {
        let log = v.log_text();
        log.matches("assignment stream open").count() > log.matches("assignment stream closed").count()
    })
}

/// How many tasks `node ls` counts on the one node.
fn tasks_of_node(vault: &TestVault) -> u64 {
    let listing: serde_json::Value =
        serde_json::from_str(vault.hush(&["node", "ls", "--format", "json"]).ok()).expect("node ls json");
    let node = listing.as_array().and_then(|nodes| nodes.first()).unwrap_or(&listing);
    node["Tasks"].as_u64().expect("a task count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_with_its_replica_starts_and_ends_tasks_through_another() {
    let cluster = EtcdCluster::start(1);
    // Each replica reaches etcd through its own proxy, so one can be cut off alone.
    let proxies: Vec<Proxy> = (0..2).map(|_| Proxy::start(&cluster.endpoints()[0])).collect();
    let url = |i: usize| format!("etcd://{}/hafail", proxies[i].addr);
    let mut first = TestVault::init(&["--store", &url(0)]);
    first.serve_args = vec!["--store".into(), url(0)];
    first.start();
    let mut second = TestVault::replica_of(&first);
    second.serve_args = vec!["--store".into(), url(1)];
    second.start();
    let vaults = [first, second];
    let list = format!("{},{}", vaults[0].addr, vaults[1].addr);
    vaults[0].hush_stdin(&["secret", "create", "s", "-"], b"one").ok();
    vaults[0].hush(&["service", "create", "web", "--secret", "s"]).ok();

    let agent = TestAgent::join_any(&vaults[0], &list);
    // The first task's StartTask goes to the replica the node starts at, as its stream does.
    assert_eq!(agent.run(&vaults[0], &["--service", "web", "--", "cat", "/run/secrets/s"]).ok().trim(), "one");
    let cut = wait_for("the replica serving the agent", || serving(&vaults));
    let other = 1 - cut;

    let failovers = || agent.log_text().matches("cannot take the call; trying the next").count();
    assert_eq!(failovers(), 0, "no call failed over while every replica followed etcd");
    proxies[cut].cut();
    wait_for("the cut-off replica to say why", || vaults[cut].log_text().contains("lost etcd").then_some(()));
    wait_for("the stream on the other replica", || (serving(&vaults) == Some(other)).then_some(()));
    vaults[other].hush_stdin(&["secret", "rotate", "s", "-"], b"two").ok();

    // A new task: its StartTask reaches the other replica (the agent's unary calls went to the
    // cut-off one first: it refused them, and they were sent to the other).
    assert_eq!(agent.run(&vaults[other], &["--service", "web", "--", "cat", "/run/secrets/s"]).ok().trim(), "two");
    assert!(failovers() > 0, "a call went to the cut-off replica and failed over:\n{}", agent.log_text());
    // Its EndTask went through the other replica too: the node runs no task.
    wait_for("the ended task to be gone", || (tasks_of_node(&vaults[other]) == 0).then_some(()));

    // `audit verify` on the cut-off replica cannot read the chains: it says so, with its own
    // exit status, and does not call the log tampered.
    let unread = vaults[cut].hush(&["audit", "verify"]);
    assert_eq!(unread.status.code(), Some(3), "{unread:?}");
    let line = unread.fails_with("audit log not verified: it could not be read");
    assert!(!line.contains("tampered:"), "{line}");

    // Back on etcd, the cut-off replica serves again, and the log verifies.
    proxies[cut].restore();
    wait_for("the replica to follow etcd again", || {
        vaults[cut].hush(&["secret", "inspect", "s"]).status.success().then_some(())
    });
    let intact = vaults[cut].hush(&["audit", "verify"]);
    assert!(intact.ok().contains("audit log intact"), "{intact:?}");
}
