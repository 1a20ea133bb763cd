//! A join token minted by replicas on etcd carries their addresses (version 2): an agent given
//! no `--vault` joins through them and fails over between them. An embedded vault's token is
//! still version 1, and an agent without `--vault` says it needs one.

use hush_tests::etcd::EtcdCluster;
use hush_tests::{TestAgent, TestVault, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_vault_joins_and_fails_over_through_the_token_list() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("/hajoin");
    let mut first = TestVault::init(&["--store", &url]);
    first.serve_args = vec!["--store".into(), url.clone()];
    first.start();
    let mut vaults = vec![first];
    for _ in 0..2 {
        let mut replica = TestVault::replica_of(&vaults[0]);
        replica.start();
        vaults.push(replica);
    }
    let a = &vaults[0];
    a.hush_stdin(&["secret", "create", "s", "-"], b"one").ok();
    a.hush(&["service", "create", "web", "--secret", "s"]).ok();

    // Minted on any replica, the token lists every replica.
    let token = vaults[1].hush(&["node", "join-token", "-q"]).ok().trim().to_string();
    assert!(token.starts_with("HUSHTKN-2-"), "{token}");
    for vault in &vaults {
        assert!(token.contains(&vault.addr), "{} not in {token}", vault.addr);
    }
    assert!(token.len() < 4096);

    let mut agent = TestAgent::new();
    let file = agent.token_file(&token);
    agent.start(&["--join-token-file", file.to_str().unwrap()]).expect("the agent joins with no --vault");
    let mut task = agent.session(a, "web", "cat /run/secrets/s");
    assert_eq!(task.ask(), "one");

    // The replica it streams from dies: it moves to another one of the token's list.
    let serving = wait_for("the replica serving the agent", || {
        vaults.iter().position(|v| {
            let log = v.log_text();
            log.matches("assignment stream open").count() > log.matches("assignment stream closed").count()
        })
    });
    vaults[serving].kill9();
    let other = &vaults[(serving + 1) % 3];
    other.hush_stdin(&["secret", "rotate", "s", "-"], b"two").ok();
    wait_for("the rotation through another replica", || (task.ask() == "two").then_some(()));
    drop(task);
    agent.stop();

    // An embedded vault: a version 1 token, and no address to go to without --vault.
    let embedded = TestVault::start_new();
    let token = embedded.hush(&["node", "join-token", "-q"]).ok().trim().to_string();
    assert!(token.starts_with("HUSHTKN-1-"), "{token}");
    let mut agent = TestAgent::new();
    let file = agent.token_file(&token);
    let refused = agent.start(&["--join-token-file", file.to_str().unwrap()]).expect_err("no vault to join");
    assert!(refused.stderr.contains("lists no vault address: pass --vault"), "{}", refused.stderr);
    // --vault still works with it (and overrides a list).
    agent.start(&["--vault", &embedded.addr, "--join-token-file", file.to_str().unwrap()]).expect("joins");
}
