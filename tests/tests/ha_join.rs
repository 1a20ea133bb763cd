//! A join token minted by replicas on etcd carries their addresses (version 2): an agent given
//! no `--vault` joins through them and fails over between them. An embedded vault's token is
//! still version 1, and an agent without `--vault` says it needs one.

use hush_tests::etcd::EtcdCluster;
use hush_tests::node_client;
use hush_tests::{TestAgent, TestVault, wait_for};

/// Refused joins an address may cause at once before the vault throttles it (vault/src/join_gate.rs).
fn join_gate_burst() -> usize {
    hush_vault::join_gate::RATE.burst as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_vault_joins_and_fails_over_through_the_token_list() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("/hajoin");
    let mut vaults = TestVault::replicas_on(&url, 3, &[]);
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

/// Agents that boot together on one token contend for its use count, and share their host's
/// budget of refused joins: a join the vault could not take now (contended, or throttled because
/// this address was refused too often) is asked again with backoff, so all five agents of a
/// five-use token join; a sixth is refused for good, in one line, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_booting_together_on_one_token_all_join_and_one_too_many_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("/hajoin5");
    let vaults = TestVault::replicas_on(&url, 3, &[]);
    let token = vaults[0].hush(&["node", "join-token", "-q", "--uses", "5"]).ok().trim().to_string();
    let addresses: Vec<&str> = vaults.iter().map(|v| v.addr.as_str()).collect();
    // This host (127.0.0.1) has used up its refused joins on every replica (an earlier bad
    // token, say): each replica takes its next join only after its bucket refills.
    let ca_pem = std::fs::read_to_string(vaults[0].admin_dir().join("ca.pem")).expect("ca.pem");
    for addr in &addresses {
        for _ in 0..=join_gate_burst() {
            let refused = node_client::join(addr, "HUSHTKN-1-00-wrong", &ca_pem, "bad", None).await;
            assert!(refused.is_err(), "a wrong token is refused");
        }
        let Err(throttled) = node_client::join(addr, &token, &ca_pem, "early", None).await else {
            panic!("{addr} should throttle this address now");
        };
        assert!(throttled.contains("too many refused joins"), "{throttled}");
    }

    // Five agents at once, each starting at another replica (so they contend across replicas too).
    let mut agents: Vec<TestAgent> = (0..5).map(|_| TestAgent::new()).collect();
    let started: Vec<Result<(), hush_tests::Run>> = std::thread::scope(|scope| {
        let joins: Vec<_> = agents
            .iter_mut()
            .enumerate()
            .map(|(i, agent)| {
                let mut list = addresses.clone();
                list.rotate_left(i % 3);
                let (list, file) = (list.join(","), agent.token_file(&token));
                scope.spawn(move || agent.start(&["--vault", &list, "--join-token-file", file.to_str().unwrap()]))
            })
            .collect();
        joins.into_iter().map(|j| j.join().expect("no panic")).collect()
    });
    for (i, result) in started.iter().enumerate() {
        assert!(result.is_ok(), "agent {i} joins: {:?}", result.as_ref().err());
    }
    let asked_again =
        agents.iter().filter(|a| a.log_text().contains("could not take the join now; asking again")).count();
    assert!(asked_again > 0, "some agent was throttled and asked again");
    let nodes = vaults[1].hush(&["node", "ls", "-q"]).ok().lines().count();
    assert_eq!(nodes, 5, "five nodes joined");

    // The sixth: the token is used up, which no retry can change.
    let mut sixth = TestAgent::new();
    let file = sixth.token_file(&token);
    let began = std::time::Instant::now();
    let refused = sixth.start(&["--vault", &addresses.join(","), "--join-token-file", file.to_str().unwrap()]);
    let refused = refused.expect_err("a sixth join on a five-use token is refused");
    let errors: Vec<&str> = refused.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {}", refused.stderr);
    assert!(errors[0].contains("has been used 5 time(s), its limit"), "{}", errors[0]);
    assert!(!refused.stderr.contains("asking again"), "a used-up token is not asked again: {}", refused.stderr);
    assert!(began.elapsed() < std::time::Duration::from_secs(20), "refused at once, not after retries");
}

/// A replica that is gone drops out of new join tokens once its etcd lease ends (its
/// advertise entry lives under the lease), while `vault members` still lists it as Down; once
/// it serves again, new tokens list it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_replica_leaves_new_tokens_when_its_lease_ends_and_comes_back_with_it() {
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("/hajoinlease");
    let mut first = TestVault::init(&["--store", &url]);
    first.serve_args = vec!["--store".into(), url.clone(), "--lease-ttl".into(), "2s".into()];
    first.start();
    let mut second = TestVault::replica_of(&first);
    second.start();
    let token = |vault: &TestVault| vault.hush(&["node", "join-token", "-q"]).ok().trim().to_string();
    wait_for("both replicas in a token", || {
        let t = token(&first);
        (t.contains(&first.addr) && t.contains(&second.addr)).then_some(())
    });

    let gone = second.addr.clone();
    second.kill9();
    // Within the 2 s lease (and a renewal period): no longer in new tokens.
    wait_for("the killed replica to leave new tokens", || {
        let t = token(&first);
        (t.contains(&first.addr) && !t.contains(&gone)).then_some(())
    });
    let members = first.hush(&["vault", "members"]).ok().to_string();
    let row = members.lines().find(|l| l.contains(&gone)).unwrap_or_else(|| panic!("still a member: {members}"));
    assert!(row.contains("Down"), "{row}");

    second.start_on(&gone);
    wait_for("the replica back in new tokens", || token(&first).contains(&gone).then_some(()));
}
