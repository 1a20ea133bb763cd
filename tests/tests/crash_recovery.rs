//! `kill -9` of the agent under running tasks and containers (issue 11, crash recovery): the agent
//! started again with the same arguments repairs each view in place and serves it, without the
//! task or container being restarted; a task whose process died meanwhile is ended; a process that
//! took a dead task's pid is given nothing.

use hush_tests::docker::{self, PODMAN_ULIMITS, PodmanService};
use hush_tests::loops::{ReadLoop, script};
use hush_tests::{DEADLINE, Run, TestAgent, TestVault, marker, wait_for};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// `hush service mounts SERVICE --format docker` for this agent's mount root.
fn mount_flags(vault: &TestVault, agent: &TestAgent, service: &str) -> Vec<String> {
    let run = Run::from_command(
        vault
            .command()
            .env("HUSH_MOUNT_ROOT", agent.mount_root())
            .args(["service", "mounts", service, "--format", "docker"]),
    );
    run.ok().split_whitespace().map(String::from).collect()
}

fn unique(tag: &str) -> String {
    format!("hush-crash-{tag}-{}-{:x}", std::process::id(), rand_ish())
}

fn rand_ish() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos()
}

/// A container of `service` running the read loop (`ENGINE run -i`: its output comes back on the
/// client's stdout), removed on drop.
fn container_loop(program: &str, image: &str, flags: &[String], extra: &[&str]) -> ReadLoop {
    let name = unique(program);
    let mut command = Command::new(program);
    command.args(["run", "-i", "--rm", "--network", "none", "--name", &name]).args(extra).args(flags);
    command.args([image, "sh", "-c", &script("/run/secrets/s")]);
    let mut cleanup = Command::new(program);
    cleanup.args(["rm", "-f", &name]);
    ReadLoop::spawn(&mut command).cleanup_with(cleanup)
}

/// A `hush run` task of `service` running the read loop.
fn task_loop(vault: &TestVault, agent: &TestAgent, service: &str) -> ReadLoop {
    let mut command = vault.command();
    command.env("HUSH_AGENT_SOCKET", agent.socket()).args(["run", "--service", service, "--"]);
    command.args(["sh", "-c", &script("/run/secrets/s")]);
    ReadLoop::spawn(&mut command)
}

/// How many tasks the vault records for the (single) node.
fn vault_tasks(vault: &TestVault) -> u64 {
    let listing = vault.hush(&["node", "ls", "--format", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(listing.ok()).expect("node ls prints JSON");
    nodes[0]["Tasks"].as_u64().expect("task count")
}

/// A task and a Docker and a Podman container each read their secret every 10 ms; the agent is
/// killed with SIGKILL and started again: each loop reads again, in the same process, and a
/// rotation right after reaches all three.
#[test]
fn kill9_then_restart_repairs_tasks_and_containers_in_place() {
    let image = docker::image();
    let podman_image = docker::podman_image();
    let podman = PodmanService::start();
    let vault = TestVault::start_new();
    let podman_args = ["--podman-socket", podman.socket.to_str().expect("utf-8")];
    let mut agent = TestAgent::join_with(&vault, &podman_args);
    let before = marker("before");
    vault.hush_stdin(&["secret", "create", "s", "-"], before.as_bytes()).ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let service_dir = agent.mount_root().join("services/web");
    wait_for("the service directory", || service_dir.is_dir().then_some(()));
    let flags = mount_flags(&vault, &agent, "web");

    let started = Instant::now();
    let mut loops = vec![
        ("hush run task", task_loop(&vault, &agent, "web")),
        ("docker container", container_loop("docker", &image, &flags, &[])),
        ("podman container", container_loop("podman", &podman_image, &flags, &PODMAN_ULIMITS)),
    ];
    for (what, reads) in &loops {
        reads.wait_value(&before, started);
        eprintln!("{what}: reading");
    }

    let killed = Instant::now();
    agent.kill9();
    agent.start(&podman_args).expect("agent restarts with the same arguments");
    let restarted = Instant::now();
    for (what, reads) in &mut loops {
        let outage = reads
            .outage_after(killed, DEADLINE)
            .unwrap_or_else(|| panic!("the {what} never read again; agent log:\n{}", agent.log_text()));
        // The figures for the closing note; the deadline above is the only timed assertion.
        eprintln!(
            "{what}: first failed read {:?} after the kill, reading again {:?} after it ({:?} after the restart), {} failed reads",
            outage.first_fail - killed,
            outage.back - killed,
            outage.back.saturating_duration_since(restarted),
            outage.failed_reads
        );
        assert!(reads.still_running(), "the {what} was restarted");
    }

    let after = marker("after");
    let rotated = Instant::now();
    vault.hush_stdin(&["secret", "rotate", "s", "-"], after.as_bytes()).ok();
    for (what, reads) in &loops {
        reads.wait_value(&after, rotated);
        eprintln!("{what}: reads the rotated value");
    }
    // `hush run` retries its resume every 100 ms: it may come after the reads are back.
    wait_for("the task resumed by its hush run", || {
        agent.log_text().contains("task resumed by its hush run").then_some(())
    });
    let log = agent.log_text();
    assert!(log.contains("container view repaired"), "{log}");
    // The audit trail records the recovery, once, with what was repaired: the task, the Docker
    // container and the Podman container.
    let recovered = wait_for("the recovery in the audit trail", || {
        let out = vault.hush(&["audit", "--format", "json"]);
        let entries: Vec<serde_json::Value> = serde_json::from_str(out.ok()).expect("audit json");
        let restarts: Vec<String> = entries
            .iter()
            .filter(|e| e["op"] == "agent_restart")
            .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            .collect();
        (!restarts.is_empty()).then_some(restarts)
    });
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(recovered[0].starts_with("recovered after a crash: fresh mount, 3 views repaired in "), "{recovered:?}");
    let status = Run::from_command(
        Command::new(hush_tests::bin("hush-agent")).args(["status", "--state-dir"]).arg(agent.state_dir()),
    );
    assert_eq!(status.ok().trim(), format!("last start: {}", recovered[0]));
}

/// The pid that `command` gets, made to be `pid` through `ns_last_pid` (retried: other processes
/// on the machine may take it first). Returns the child once it has that pid.
fn spawn_with_pid(pid: u32, command: &mut Command) -> Child {
    for _ in 0..500 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("write ns_last_pid");
        let mut child = command.spawn().expect("spawns");
        if child.id() == pid {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not get pid {pid} back");
}

/// The device (`major:minor`) of the mount at `mount_point` in process `pid`'s mountinfo (top one).
fn device_at(pid: u32, mount_point: &Path) -> Option<String> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    let want = mount_point.to_str()?;
    table.lines().rfind(|l| l.split(' ').nth(4) == Some(want)).and_then(|l| l.split(' ').nth(2)).map(String::from)
}

fn device_of(path: &Path) -> String {
    let dev = std::fs::metadata(path).expect("stat").dev();
    format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))
}

/// During the outage one task's `hush run` dies, and another's dies and its pid goes to an attacker
/// in a namespace holding a bind of that task's secrets directory: the restarted agent ends both tasks
/// and repairs nothing of the attacker's (its bind stays dead, its reads keep failing).
#[test]
fn dead_tasks_are_ended_and_a_reused_pid_is_given_nothing() {
    let vault = TestVault::start_new();
    let mut agent = TestAgent::join(&vault);
    let value = marker("victim");
    vault.hush_stdin(&["secret", "create", "s", "-"], value.as_bytes()).ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let started = Instant::now();
    let mut gone = task_loop(&vault, &agent, "web");
    let mut victim = task_loop(&vault, &agent, "web");
    gone.wait_value(&value, started);
    victim.wait_value(&value, started);
    assert_eq!(vault_tasks(&vault), 2);

    // The attacker's namespace, made while the agent serves: a bind of the victim's secrets directory
    // (host root may look up names; every open is still checked).
    let victim_pid = victim.child.id();
    let victim_task = recorded_task(&agent, victim_pid);
    let spy = tempfile::tempdir().expect("temp dir");
    let spy_point = spy.path().join("spy");
    std::fs::create_dir(&spy_point).expect("mount point");
    let source = agent.mount_root().join(&victim_task).join("root/run/secrets");
    let bind = format!("mount --bind {} {} && echo bound && exec sleep 600", source.display(), spy_point.display());
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &bind])
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare runs");
    let out = holder.stdout.take().expect("piped");
    assert!(hush_tests::read_line_with(out, "bound").is_some(), "the attacker's bind failed");

    agent.kill9();
    for reads in [&mut gone, &mut victim] {
        let _ = reads.child.kill();
        let _ = reads.child.wait();
    }
    // The victim's pid, now an attacker's, in the holder's namespace.
    let mut command = Command::new("nsenter");
    command.args(["-t", &holder.id().to_string(), "-m", "sleep", "600"]).stdin(Stdio::null());
    let mut attacker = spawn_with_pid(victim_pid, &mut command);

    agent.start(&[]).expect("agent restarts");
    wait_for("both tasks ended at the vault", || (vault_tasks(&vault) == 0).then_some(()));
    wait_for("both tasks' files withdrawn", || agent.task_dirs().is_empty().then_some(()));
    let log = agent.log_text();
    assert!(log.contains("task left by the crashed agent ended: its hush run exited"), "{log}");
    assert!(
        log.contains("ended: its pid belongs to another process now")
            || log.contains("ended: its pid is in another mount namespace now"),
        "{log}"
    );
    // The attacker's bind is still the dead mount: nothing of the new one was given.
    let new_device = device_of(&agent.mount_root());
    let spied = device_at(attacker.id(), &spy_point).expect("the attacker's bind is still there");
    assert_ne!(spied, new_device, "the attacker was given the new mount");
    let read = Run::from_command(
        Command::new("nsenter").args(["-t", &attacker.id().to_string(), "-m", "cat"]).arg(spy_point.join("s")),
    );
    assert!(!read.status.success() && !read.stdout.contains(&value), "the attacker read the secret: {read:?}");

    for child in [&mut attacker, &mut holder] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The task ID the agent recorded for the `hush run` with this pid (its state dir's task records).
fn recorded_task(agent: &TestAgent, pid: u32) -> String {
    wait_for("the task's record", || {
        let dir = std::fs::read_dir(agent.state_dir().join("tasks")).ok()?;
        dir.flatten().find_map(|entry| {
            let record: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
            (record["pid"].as_u64() == Some(u64::from(pid)))
                .then(|| record["task_id"].as_str().map(String::from))
                .flatten()
        })
    })
}
