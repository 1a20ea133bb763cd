//! Faults with a real 3-member etcd and 3 vault replicas, two agents given every replica
//! (`--vault a,b,c`): kill -9 the replica the agents stream from, kill -9 the etcd leader,
//! SIGSTOP a replica. Rotations go on through whichever replica answers; after each fault
//! every agent's task reads the last acknowledged rotation, no task ever sees a version go
//! backwards, and every live replica's audit chain verifies.

use hush_tests::etcd::{EtcdCluster, signal};
use hush_tests::{TaskSession, TestAgent, TestVault, wait_for};
use std::time::{Duration, Instant};

struct Replicas {
    vaults: Vec<TestVault>,
    up: Vec<bool>,
}

impl Replicas {
    fn start(url: &str) -> Self {
        let mut first = TestVault::init(&["--store", url]);
        first.serve_args = vec!["--store".into(), url.into()];
        first.start();
        let mut vaults = vec![first];
        for _ in 0..2 {
            let mut replica = TestVault::replica_of(&vaults[0]);
            replica.start();
            vaults.push(replica);
        }
        Self { vaults, up: vec![true; 3] }
    }

    fn addresses(&self) -> String {
        self.vaults.iter().map(|v| v.addr.as_str()).collect::<Vec<_>>().join(",")
    }

    fn live(&self) -> impl Iterator<Item = &TestVault> {
        self.vaults.iter().zip(&self.up).filter(|(_, up)| **up).map(|(v, _)| v)
    }

    /// Which live replica holds more open assignment streams than it closed (from its log).
    fn serving(&self) -> Vec<usize> {
        (0..self.vaults.len())
            .filter(|&i| self.up[i])
            .filter(|&i| {
                let log = self.vaults[i].log_text();
                log.matches("assignment stream open").count() > log.matches("assignment stream closed").count()
            })
            .collect()
    }

    /// `hush secret rotate s` through the first live replica that acknowledges it, retrying
    /// while a fault is settling. Returns when one did.
    fn rotate(&self, value: &str) {
        let start = Instant::now();
        loop {
            for vault in self.live() {
                if vault.hush_stdin(&["secret", "rotate", "s", "-"], value.as_bytes()).status.success() {
                    return;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no replica acknowledged rotation {value}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What each task has read, in order: versions as numbers, checked never to go backwards.
struct Reader {
    task: TaskSession,
    last: u32,
}

impl Reader {
    fn read(&mut self) -> u32 {
        let value: u32 = self.task.ask().strip_prefix('v').and_then(|n| n.parse().ok()).expect("a vN value");
        assert!(value >= self.last, "a task saw v{value} after v{}", self.last);
        self.last = value;
        value
    }

    /// Reads until the task sees `version`; returns how long that took.
    fn wait_for(&mut self, version: u32) -> Duration {
        let start = Instant::now();
        wait_for(&format!("v{version} in the task"), || (self.read() >= version).then_some(()));
        start.elapsed()
    }
}

/// One more rotation; waits until every task reads it.
fn rotate_and_check(replicas: &Replicas, readers: &mut [Reader], version: &mut u32, what: &str) {
    *version += 1;
    replicas.rotate(&format!("v{version}"));
    let took: Vec<Duration> = readers.iter_mut().map(|r| r.wait_for(*version)).collect();
    eprintln!("{what}: v{version} reached every task in at most {:?}", took.iter().max().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_reach_agents_through_replica_and_etcd_faults() {
    let mut cluster = EtcdCluster::start(3);
    let url = cluster.url("/failover");
    let mut replicas = Replicas::start(&url);
    let a = &replicas.vaults[0];
    a.hush_stdin(&["secret", "create", "s", "-"], b"v0").ok();
    a.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let agents: Vec<TestAgent> = (0..2).map(|_| TestAgent::join_any(a, &replicas.addresses())).collect();
    let mut readers: Vec<Reader> =
        agents.iter().map(|agent| Reader { task: agent.session(a, "web", "cat /run/secrets/s"), last: 0 }).collect();
    let mut version = 0;
    rotate_and_check(&replicas, &mut readers, &mut version, "healthy");

    // kill -9 the replica the agents stream from: they move to another and get the rotation
    // committed while they were moving.
    let serving = wait_for("a replica serving the agents", || replicas.serving().first().copied());
    replicas.vaults[serving].kill9();
    replicas.up[serving] = false;
    let killed = Instant::now();
    rotate_and_check(&replicas, &mut readers, &mut version, "replica killed");
    eprintln!("failover: replica killed -> every task read the next rotation after {:?}", killed.elapsed());

    // kill -9 the etcd leader: rotations resume on the new leader and still reach the tasks.
    let leader = cluster.leader().expect("an etcd leader");
    cluster.kill9(leader);
    rotate_and_check(&replicas, &mut readers, &mut version, "etcd leader killed");
    cluster.restart(leader);
    cluster.wait_for_leader();

    // SIGSTOP a serving replica for a while: rotations through the other go on; once it runs
    // again the agents are current.
    let paused = wait_for("a replica serving the agents", || replicas.serving().first().copied());
    let pid = replicas.vaults[paused].pid();
    signal(pid, rustix::process::Signal::STOP);
    version += 1;
    replicas.up[paused] = false;
    replicas.rotate(&format!("v{version}"));
    replicas.up[paused] = true;
    std::thread::sleep(Duration::from_secs(3));
    signal(pid, rustix::process::Signal::CONT);
    for reader in &mut readers {
        reader.wait_for(version);
    }
    rotate_and_check(&replicas, &mut readers, &mut version, "after SIGSTOP/SIGCONT");

    // Nothing acknowledged was lost, and every live replica's audit chain verifies.
    for vault in replicas.live() {
        let listed = vault.hush(&["secret", "ls"]);
        let row: Vec<&str> = listed.ok().lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[2], (version + 1).to_string(), "every rotation stored: {}", listed.stdout);
        vault.hush(&["audit", "verify"]).ok();
    }
    drop(readers);
    drop(agents);
}
