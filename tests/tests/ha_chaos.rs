//! Chaos on a real 3-member etcd cluster with 3 vault replicas, while a writer rotates one
//! secret and creates others without pause and tasks keep reading it: real agents (`--vault
//! a,b,c`, each with a task reading through FUSE) and in-process stream-only nodes (three
//! starting on each replica, moving to the next when a stream breaks). One fault per phase:
//! kill -9 the etcd leader; kill -9 the replica streaming to most agents; SIGSTOP a replica
//! for 10 s; cut the replica streaming to most agents off etcd (each replica reaches etcd only
//! through proxies of its own).
//!
//! After each phase: a last acknowledged rotation reaches every agent and every node (the
//! assignment is a level-triggered snapshot, so a rotation "reaches" an agent when the agent
//! holds it or a later one; intermediate versions may be folded); no agent ever saw a version
//! go backwards (nodes by version number; tasks by value, each value mapped to the version its
//! acknowledged rotation returned, so a rotation whose answer was lost is not judged); no
//! acknowledged create or rotation is lost (versions acknowledged are strictly increasing, and
//! every acknowledged name is listed by every live replica); `hush audit verify` passes on
//! every live replica. The phases share one cluster and run in one test, serially.

use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use hush_tests::etcd::{EtcdCluster, signal};
use hush_tests::node_client::{self, StreamNode};
use hush_tests::proxy::Proxy;
use hush_tests::{TaskSession, TestAgent, TestVault};
use hush_vault::client::{TlsBundle, connect_channel};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const REPLICAS: usize = 3;
const AGENTS: usize = 3;
const NODES_PER_REPLICA: usize = 3;
/// An admin call that takes longer than this counts as unanswered (its replica may be paused).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long everything may take to catch up after a fault.
const CATCH_UP: Duration = Duration::from_secs(40);
/// Writes go on this long around a fault.
const UNDER_FAULT: Duration = Duration::from_secs(3);

/// What the writer was told: every attempt, with what its answer said (None: no answer).
#[derive(Default)]
struct Ledger {
    /// `v{attempt}` values rotated into `s`, with the version each acknowledged one got.
    rotations: Vec<(u64, Option<u64>)>,
    /// Secrets created, with whether the create was acknowledged.
    creates: Vec<(String, bool)>,
    attempt: u64,
}

impl Ledger {
    fn version_of(&self, value: &str) -> Option<u64> {
        let attempt: u64 = value.strip_prefix('v')?.parse().ok()?;
        self.rotations.iter().find(|(a, _)| *a == attempt).and_then(|(_, v)| *v)
    }
}

/// A real agent's task, read in a loop on its own thread; every value read is kept in order.
struct Reader {
    reads: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(mut task: TaskSession) -> Self {
        let reads: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_reads, thread_stop) = (reads.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                let value = task.ask();
                thread_reads.lock().unwrap().push((Instant::now(), value));
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = task.finish();
        });
        Self { reads, stop, thread: Some(thread) }
    }

    fn last(&self) -> Option<String> {
        self.reads.lock().unwrap().last().map(|(_, v)| v.clone())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A task stuck in a read would hang the join: when failing, leave it to the exit.
        if let Some(thread) = self.thread.take().filter(|_| !std::thread::panicking()) {
            let _ = thread.join();
        }
    }
}

struct World {
    // Dropped in this order: tasks end while their agents still serve them, nodes and agents
    // before the replicas, etcd last.
    readers: Vec<Reader>,
    nodes: Vec<StreamNode>,
    agents: Vec<TestAgent>,
    admins: Vec<AdminClient<Channel>>,
    vaults: Vec<TestVault>,
    /// Where each replica's log begins for its current process (a restart appends to it).
    log_from: Vec<usize>,
    /// False while a replica is killed or cut off (not while paused: it is still called).
    up: Vec<bool>,
    secret_id: String,
    ledger: Arc<Mutex<Ledger>>,
    /// Each replica reaches each etcd member through one of its own proxies.
    proxies: Vec<Vec<Proxy>>,
    cluster: EtcdCluster,
}

impl World {
    async fn start() -> Self {
        let cluster = EtcdCluster::start(3);
        let url = cluster.url("/chaos");
        let proxies: Vec<Vec<Proxy>> =
            (0..REPLICAS).map(|_| cluster.endpoints().iter().map(|e| Proxy::start(e)).collect()).collect();
        let through = |i: usize| {
            let addrs: Vec<&str> = proxies[i].iter().map(|p| p.addr.as_str()).collect();
            vec!["--store".to_string(), format!("etcd://{}/chaos", addrs.join(","))]
        };
        let mut first = TestVault::init(&["--store", &url]);
        first.serve_args = through(0);
        first.start();
        let mut vaults = vec![first];
        for i in 1..REPLICAS {
            let mut replica = TestVault::replica_of(&vaults[0]);
            replica.serve_args = through(i);
            replica.start();
            vaults.push(replica);
        }
        let bundle = TlsBundle::read(&vaults[0].admin_dir()).unwrap();
        let mut admins = Vec::new();
        for vault in &vaults {
            admins.push(AdminClient::new(connect_channel(&vault.addr, &bundle).await.unwrap()));
        }
        let created = admins[0].clone().create(secret("s", "v0")).await.unwrap().into_inner();
        vaults[0].hush(&["service", "create", "web", "--secret", "s"]).ok();

        let addresses: Vec<String> = vaults.iter().map(|v| v.addr.clone()).collect();
        let agents: Vec<TestAgent> =
            (0..AGENTS).map(|_| TestAgent::join_any(&vaults[0], &addresses.join(","))).collect();
        let readers =
            agents.iter().map(|a| Reader::start(a.session(&vaults[0], "web", "cat /run/secrets/s"))).collect();
        let token = vaults[0].hush(&["node", "join-token", "-q"]).ok().trim().to_string();
        let ca = std::fs::read_to_string(vaults[0].admin_dir().join("ca.pem")).unwrap();
        let mut nodes = Vec::new();
        for i in 0..REPLICAS * NODES_PER_REPLICA {
            let at = i % REPLICAS;
            let identity = node_client::join(&addresses[at], &token, &ca, &format!("stream-{i}"), None).await.unwrap();
            nodes.push(StreamNode::follow(identity, addresses.clone(), at, None));
        }
        let mut world = Self {
            readers,
            nodes,
            agents,
            admins,
            vaults,
            log_from: vec![0; REPLICAS],
            up: vec![true; REPLICAS],
            secret_id: created.id,
            ledger: Arc::default(),
            proxies,
            cluster,
        };
        world.settle("healthy").await;
        world
    }

    /// Rotates and creates through the replicas in turn until told to stop.
    fn start_writing(&self) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (admins, ledger, task_stop) = (self.admins.clone(), self.ledger.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut next = 0;
            while !task_stop.load(Ordering::SeqCst) {
                next = (next + 1) % admins.len();
                write_once(&admins[next], &ledger).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Writer { stop, task }
    }

    /// Which replica serves the most real agents (from the replicas' logs, less the nodes
    /// known to stream there), and how many.
    fn busiest_replica(&self) -> (usize, usize) {
        let agents_on = |i: usize| {
            let log = self.vaults[i].log_text();
            let log = &log[self.log_from[i].min(log.len())..];
            let open = log
                .matches("assignment stream open")
                .count()
                .saturating_sub(log.matches("assignment stream closed").count());
            open.saturating_sub(self.nodes.iter().filter(|n| n.replica() == Some(i)).count())
        };
        (0..REPLICAS).filter(|&i| self.up[i]).map(|i| (i, agents_on(i))).max_by_key(|(_, n)| *n).unwrap()
    }

    /// Stops writing, makes one last acknowledged rotation with nothing committed after it,
    /// waits until every agent and node holds it, and checks everything recorded so far.
    async fn settle(&mut self, phase: &str) -> Duration {
        let (value, version) = loop {
            let (value, version) = self.last_rotation().await;
            // A rotation whose answer was lost may still commit after this one (its replica
            // was paused mid-call): then rotate once more.
            if self.current_version().await == version {
                break (value, version);
            }
        };
        let committed = Instant::now();
        let deadline = committed + CATCH_UP;
        loop {
            let nodes_behind: Vec<&str> = self
                .nodes
                .iter()
                .filter(|n| n.latest(&self.secret_id).is_none_or(|(v, _)| v < version))
                .map(|n| n.node_id.as_str())
                .collect();
            let tasks_behind = self.readers.iter().filter(|r| r.last().as_deref() != Some(value.as_str())).count();
            if nodes_behind.is_empty() && tasks_behind == 0 {
                break;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.agents.iter().map(|a| a.log_text()).collect();
                panic!(
                    "{phase}: {value} (version {version}) not delivered: nodes behind {nodes_behind:?}, \
                     {tasks_behind} tasks behind\nagent logs: {logs:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivered = committed.elapsed();
        self.check(phase).await;
        let slowest = self
            .nodes
            .iter()
            .filter_map(|n| {
                n.first_at_least(&self.secret_id, version).map(|at| (at.saturating_duration_since(committed), n))
            })
            .max_by_key(|(took, _)| *took)
            .map(|(took, n)| format!("node {} on replica {:?} after {took:?}", n.node_id, n.replica()));
        eprintln!(
            "{phase}: version {version} reached every agent and node {delivered:?} after it was acknowledged (slowest: {})",
            slowest.unwrap_or_default()
        );
        delivered
    }

    /// Rotates through the first replica that answers; retries until one does.
    async fn last_rotation(&self) -> (String, u64) {
        let start = Instant::now();
        loop {
            for (i, admin) in self.admins.iter().enumerate() {
                if !self.up[i] {
                    continue;
                }
                if let Some(done) = write_rotation(admin, &self.ledger).await {
                    return done;
                }
            }
            assert!(start.elapsed() < CATCH_UP, "no replica acknowledged a rotation");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn current_version(&self) -> u64 {
        let request = pb::InspectRequest { kind: pb::Kind::Secret as i32, reference: "s".into() };
        for (i, admin) in self.admins.iter().enumerate() {
            if !self.up[i] {
                continue;
            }
            if let Ok(Ok(found)) = tokio::time::timeout(CALL_TIMEOUT, admin.clone().inspect(request.clone())).await {
                return found.into_inner().meta.unwrap().version;
            }
        }
        panic!("no replica answered an inspect");
    }

    /// The checks on what the writer, the nodes and the tasks recorded; returns the acknowledged
    /// creates and how many rotations were acknowledged.
    fn check_recorded(&self, phase: &str) -> (Vec<String>, usize) {
        let ledger = self.ledger.lock().unwrap();
        // Acknowledged rotations got strictly increasing versions: none was lost and re-used.
        let acked: Vec<u64> = ledger.rotations.iter().filter_map(|(_, v)| *v).collect();
        assert!(acked.windows(2).all(|w| w[0] < w[1]), "{phase}: acknowledged versions {acked:?}");
        // No node saw a version go backwards, across every replica it moved between.
        for node in &self.nodes {
            let versions: Vec<u64> =
                node.seen().iter().filter_map(|s| s.versions.get(&self.secret_id).copied()).collect();
            assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{phase}: node {} saw {versions:?}", node.node_id);
        }
        // No task read a value older than one it had read (values of unanswered rotations
        // have no known version and are skipped).
        for (i, reader) in self.readers.iter().enumerate() {
            let reads = reader.reads.lock().unwrap();
            let known: Vec<u64> = reads.iter().filter_map(|(_, v)| ledger.version_of(v)).collect();
            assert!(known.windows(2).all(|w| w[0] <= w[1]), "{phase}: task {i} read versions {known:?}");
        }
        let acked_creates: Vec<String> = ledger.creates.iter().filter(|(_, ok)| *ok).map(|(n, _)| n.clone()).collect();
        let rotations_acked = acked.len();
        (acked_creates, rotations_acked)
    }

    /// Every check on what was recorded since the start.
    async fn check(&self, phase: &str) {
        let (acked_creates, rotations_acked) = self.check_recorded(phase);
        for (i, vault) in self.vaults.iter().enumerate().filter(|(i, _)| self.up[*i]) {
            let listed = self.admins[i]
                .clone()
                .list(pb::ListRequest { kind: pb::Kind::Secret as i32, filters: vec![] })
                .await
                .unwrap_or_else(|e| panic!("{phase}: replica {i} lists: {e}"))
                .into_inner();
            let names: std::collections::HashSet<&str> = listed.objects.iter().map(|o| o.name.as_str()).collect();
            let lost: Vec<&String> = acked_creates.iter().filter(|n| !names.contains(n.as_str())).collect();
            assert!(lost.is_empty(), "{phase}: replica {i} lost acknowledged creates {lost:?}");
            let verified = vault.hush(&["audit", "verify"]);
            assert!(verified.status.success(), "{phase}: audit verify on replica {i}: {verified:?}");
        }
        eprintln!(
            "{phase}: checked {rotations_acked} acknowledged rotations, {} acknowledged creates, {} nodes, {} tasks",
            acked_creates.len(),
            self.nodes.len(),
            self.readers.len()
        );
    }
}

struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
    }
}

fn secret(name: &str, value: &str) -> pb::CreateRequest {
    pb::CreateRequest {
        kind: pb::Kind::Secret as i32,
        name: name.to_string(),
        labels: Default::default(),
        data: value.as_bytes().to_vec(),
    }
}

/// One rotation of `s`, and every fourth time a create too, recorded in the ledger.
async fn write_once(admin: &AdminClient<Channel>, ledger: &Mutex<Ledger>) {
    let attempt = write_rotation(admin, ledger).await;
    let n = ledger.lock().unwrap().attempt;
    if attempt.is_some() && n.is_multiple_of(4) {
        let name = format!("c{n}");
        let answered = tokio::time::timeout(CALL_TIMEOUT, admin.clone().create(secret(&name, "x"))).await;
        ledger.lock().unwrap().creates.push((name, matches!(answered, Ok(Ok(_)))));
    }
}

/// Rotates `s` to the next `v{attempt}`; the value and version if acknowledged.
async fn write_rotation(admin: &AdminClient<Channel>, ledger: &Mutex<Ledger>) -> Option<(String, u64)> {
    let attempt = {
        let mut ledger = ledger.lock().unwrap();
        ledger.attempt += 1;
        ledger.attempt
    };
    let value = format!("v{attempt}");
    let request = pb::RotateRequest {
        kind: pb::Kind::Secret as i32,
        reference: "s".into(),
        data: value.clone().into_bytes(),
        only_if_changed: false,
    };
    let answered = tokio::time::timeout(CALL_TIMEOUT, admin.clone().rotate(request)).await;
    let version = match answered {
        Ok(Ok(response)) => Some(response.into_inner().version),
        _ => None,
    };
    ledger.lock().unwrap().rotations.push((attempt, version));
    version.map(|v| (value, v))
}

/// How long after `killed` every node that streamed from `victim` completed a snapshot from
/// another replica holding a newer version than `before`.
fn failover_time(
    nodes: &[StreamNode],
    on: &[bool],
    secret_id: &str,
    victim: usize,
    before: u64,
    killed: Instant,
) -> Duration {
    nodes
        .iter()
        .zip(on)
        .filter(|(_, was_on)| **was_on)
        .map(|(node, _)| {
            let moved = node.seen().into_iter().find(|s| {
                s.at > killed && s.replica != victim && s.versions.get(secret_id).is_some_and(|v| *v > before)
            });
            moved.expect("the node moved to another replica").at - killed
        })
        .max()
        .unwrap_or_default()
}

/// How long after `killed` every task read a value whose acknowledged rotation came after
/// `before` (an upper bound for the tasks of the killed replica's agents).
fn tasks_failover_time(world: &World, before: u64, killed: Instant) -> Duration {
    let ledger = world.ledger.lock().unwrap();
    world
        .readers
        .iter()
        .map(|reader| {
            let reads = reader.reads.lock().unwrap();
            let first = reads.iter().find(|(at, v)| *at > killed && ledger.version_of(v).is_some_and(|n| n > before));
            first.expect("the task read a newer rotation").0 - killed
        })
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_survive_etcd_and_replica_faults() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
    let mut world = World::start().await;

    // 1. kill -9 the etcd leader while writes go on; a new leader takes over.
    let writer = world.start_writing();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = world.cluster.leader().expect("an etcd leader");
    world.cluster.kill9(leader);
    tokio::time::sleep(UNDER_FAULT).await;
    writer.stop().await;
    world.settle("etcd leader killed").await;
    world.cluster.restart(leader);
    world.cluster.wait_for_leader();

    // 2. kill -9 the replica streaming to most agents; they move to the others.
    let writer = world.start_writing();
    let (victim, agents_on) = world.busiest_replica();
    let nodes_on: Vec<bool> = world.nodes.iter().map(|n| n.replica() == Some(victim)).collect();
    assert!(nodes_on.iter().any(|on| *on), "nodes stream from replica {victim}");
    let before = world.current_version().await;
    world.vaults[victim].kill9();
    world.up[victim] = false;
    let killed = Instant::now();
    tokio::time::sleep(UNDER_FAULT).await;
    writer.stop().await;
    world.settle("replica killed").await;
    let failover = failover_time(&world.nodes, &nodes_on, &world.secret_id, victim, before, killed);
    let tasks = tasks_failover_time(&world, before, killed);
    eprintln!(
        "replica {victim} killed with {agents_on} agents on it: its nodes read a newer rotation from another replica \
         {failover:?} later; every task read one {tasks:?} later"
    );
    let addr = world.vaults[victim].addr.clone();
    world.log_from[victim] = world.vaults[victim].log_text().len();
    world.vaults[victim].start_on(&addr);
    world.up[victim] = true;

    // 3. SIGSTOP a replica for 10 s; its calls go unanswered, then it catches up.
    let writer = world.start_writing();
    let (paused, _) = world.busiest_replica();
    let pid = world.vaults[paused].pid();
    signal(pid, rustix::process::Signal::STOP);
    tokio::time::sleep(Duration::from_secs(10)).await;
    signal(pid, rustix::process::Signal::CONT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    writer.stop().await;
    world.settle("replica paused 10 s").await;

    // 4. Cut the replica streaming to most agents off etcd: it ends its streams, its agents
    // and nodes move, rotations reach them.
    let (cut, agents_on) = world.busiest_replica();
    eprintln!("cutting replica {cut} off etcd with {agents_on} agents on it");
    let writer = world.start_writing();
    for proxy in &world.proxies[cut] {
        proxy.cut();
    }
    tokio::time::sleep(UNDER_FAULT).await;
    writer.stop().await;
    world.up[cut] = false;
    world.settle("replica cut off etcd").await;
    assert!(world.nodes.iter().all(|n| n.replica() != Some(cut)), "no node streams from the cut-off replica");
    assert!(world.vaults[cut].log_text().contains("lost etcd"), "the cut-off replica says why");
    for proxy in &world.proxies[cut] {
        proxy.restore();
    }
    world.up[cut] = true;
    let writer = world.start_writing();
    tokio::time::sleep(Duration::from_secs(1)).await;
    writer.stop().await;
    world.settle("replica back on etcd").await;
    eprintln!("chaos: {:?} in all", started.elapsed());
}
