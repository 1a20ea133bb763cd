//! How a `hush run` task ends, end to end with real signals: however `hush run` goes (SIGKILL at any
//! moment, the agent restarted, the vault slow or down), the task's files are withdrawn and the vault
//! forgets the task; signals reach the task and its status comes back.

use hush_tests::{TestAgent, TestVault, wait_for};
use std::process::Child;

/// The single node's status (`Ready`, `Down`) and how many tasks the vault records for it.
fn node_state(vault: &TestVault) -> (String, u64) {
    let listing = vault.hush(&["node", "ls", "--format", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(listing.ok()).expect("node ls prints JSON");
    let node = &nodes[0];
    (node["Status"].as_str().expect("status").to_string(), node["Tasks"].as_u64().expect("task count"))
}

/// Task directories the agent's FUSE mount shows (one per task whose files it serves).
fn served_tasks(agent: &TestAgent) -> usize {
    // `services/` holds the service directories containers bind, not tasks.
    std::fs::read_dir(agent.mount_root())
        .map(|dir| dir.flatten().filter(|e| e.file_name() != "services").count())
        .unwrap_or(0)
}

fn kill9(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// Waits until neither the vault nor the agent holds a task.
fn no_task_left(vault: &TestVault, agent: &TestAgent) {
    wait_for("the task forgotten by the vault and its files withdrawn", || {
        (node_state(vault).1 == 0 && served_tasks(agent) == 0).then_some(())
    });
}

/// The leak of issue 8: the vault is back but the agent's assignment stream is still in its reconnect
/// backoff, so `StartTask` succeeds and the agent waits for the task's files; `hush run` is killed then.
#[test]
fn killed_while_waiting_for_files_leaks_nothing() {
    let mut vault = TestVault::start_new();
    let mut agent = TestAgent::join(&vault);
    // Debug lines count the agent's failed reconnects (each doubles its backoff).
    agent.stop();
    agent.env.push(("HUSH_LOG".into(), "warn,hush_agent=debug".into()));
    agent.start(&[]).expect("agent restarts");
    vault.hush_stdin(&["secret", "create", "s", "-"], b"leak-me-not").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();

    let addr = vault.addr.clone();
    vault.kill9();
    // After five failed reconnects the agent sleeps 3.2 s before its next try: the window.
    wait_for("the agent's backoff to grow", || {
        (agent.log_text().matches("vault still unreachable").count() >= 5).then_some(())
    });
    vault.start_on(&addr);
    let mut run = agent.spawn_run(&vault, &["--service", "web", "--", "cat", "/run/secrets/s"]);
    wait_for("the vault to record the task", || (node_state(&vault).1 == 1).then_some(()));
    assert_ne!(node_state(&vault).0, "Ready", "the assignment stream reconnected too early: the window was missed");
    kill9(&mut run);

    wait_for("the agent to reconnect", || (node_state(&vault).0 == "Ready").then_some(()));
    no_task_left(&vault, &agent);
}

/// Every process below `pid` (its children, theirs...), by host PID.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut stack = vec![pid];
    while let Some(pid) = stack.pop() {
        let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for thread in threads.flatten() {
            let children = std::fs::read_to_string(thread.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                stack.push(child);
            }
        }
    }
    found
}

/// Gone, or a zombie nobody reaps (PID 1 here reaps no orphans).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

fn all_dead(what: &str, pids: &[u32]) {
    wait_for(what, || pids.iter().all(|pid| is_dead(*pid)).then_some(()));
}

fn send(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal sent");
}

/// Reads the task's stdout up to a line `ready`.
fn wait_ready(child: &mut Child) -> std::io::BufReader<std::process::ChildStdout> {
    use std::io::BufRead;
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    while line.trim() != "ready" {
        line.clear();
        assert!(out.read_line(&mut line).expect("task output") > 0, "the task ended before it was ready");
    }
    out
}

fn setup() -> (TestVault, TestAgent) {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    vault.hush_stdin(&["secret", "create", "s", "-"], b"only-for-web").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    (vault, agent)
}

/// SIGKILL at moments spread over the whole start (connecting, StartTask, the files, the mounts,
/// the command running): never a task, a file or a process left behind.
#[test]
fn sigkill_at_any_moment_leaks_nothing() {
    let (vault, agent) = setup();
    let mut left = Vec::new();
    for step in 0..8 {
        let mut run =
            agent.spawn_run(&vault, &["--service", "web", "--", "sh", "-c", "cat /run/secrets/s; exec sleep 3600"]);
        std::thread::sleep(std::time::Duration::from_millis(step * 25));
        left.extend(descendants(run.id()));
        kill9(&mut run);
    }
    all_dead("every task's processes to die with their hush run", &left);
    no_task_left(&vault, &agent);
}

/// `hush run` killed while its task (and a child the task put in the background) runs.
#[test]
fn sigkill_of_hush_run_takes_the_whole_task_with_it() {
    let (vault, agent) = setup();
    let mut run = agent.spawn_run(&vault, &["--service", "web", "--", "sh", "-c", "sleep 3600 & echo ready; wait"]);
    wait_ready(&mut run);
    let task = descendants(run.id());
    assert_eq!(task.len(), 3, "init, sh and the background sleep: {task:?}");
    assert_eq!(node_state(&vault).1, 1);
    kill9(&mut run);
    all_dead("the init, the command and its background child", &task);
    no_task_left(&vault, &agent);
}

/// Signals `hush run` gets reach the task; its exit status is the task's, 128 + N for a signal N.
#[test]
fn signals_are_forwarded_and_the_status_comes_back() {
    let (vault, agent) = setup();
    let hush_run = |extra: &[&str]| {
        let mut command = vault.command();
        command.env("HUSH_AGENT_SOCKET", agent.socket());
        command.args(extra);
        hush_tests::Run::from_command(&mut command)
    };
    // `timeout` sends SIGTERM to hush run; the task traps it and exits 3.
    let script = "trap 'echo got TERM; exit 3' TERM; echo ready; sleep 3600 & wait";
    let run = {
        let mut command = std::process::Command::new("timeout");
        command.args(["--preserve-status", "3"]).arg(hush_tests::bin("hush"));
        command.env("HUSH_VAULT", &vault.addr).env("HUSH_TLS_DIR", vault.admin_dir());
        command.env("HUSH_AGENT_SOCKET", agent.socket()).args(["run", "--service", "web", "--", "sh", "-c", script]);
        hush_tests::Run::from_command(&mut command)
    };
    assert_eq!(run.stdout, "ready\ngot TERM\n", "{run:?}");
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    // A task killed by a signal: 128 + its number, as shells report it.
    assert_eq!(hush_run(&["run", "--service", "web", "--", "sh", "-c", "kill -9 $$"]).status.code(), Some(137));
    for (signal, code) in [(rustix::process::Signal::INT, 130), (rustix::process::Signal::HUP, 129)] {
        let mut run = agent.spawn_run(&vault, &["--service", "web", "--", "sh", "-c", "echo ready; exec sleep 3600"]);
        wait_ready(&mut run);
        send(&run, signal);
        assert_eq!(run.wait().unwrap().code(), Some(code), "{signal:?}");
    }
    no_task_left(&vault, &agent);
}

/// The agent killed under a running task and not back within --reconnect-timeout: the task's files
/// are gone, so `hush run` stops it (SIGTERM, SIGKILL after --stop-timeout for a task that ignores
/// SIGTERM) and says why; the agent started later ends the task at the vault.
#[test]
fn agent_gone_stops_its_tasks() {
    let (vault, mut agent) = setup();
    let script = "trap '' TERM; cat /run/secrets/s; echo; echo ready; exec sleep 3600";
    let args = ["--service", "web", "--stop-timeout", "1", "--reconnect-timeout", "1", "--", "sh", "-c", script];
    let mut run = agent.spawn_run(&vault, &args);
    wait_ready(&mut run);
    let task = descendants(run.id());
    agent.kill9();
    let output = run.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: lost the agent") && stderr.contains("the task was stopped"), "{stderr}");
    all_dead("the task", &task);
    agent.start(&[]).expect("agent restarts");
    no_task_left(&vault, &agent);
}

/// The vault frozen while the agent starts a task, and `hush run` killed meanwhile: once the vault
/// answers, the agent ends the task it did not get to hand over.
#[test]
fn killed_while_the_vault_is_frozen_leaks_nothing() {
    let (vault, mut agent) = setup();
    agent.stop();
    agent.env.push(("HUSH_LOG".into(), "warn,hush_agent=debug".into()));
    agent.start(&[]).expect("agent restarts");
    let vault_pid = rustix::process::Pid::from_raw(vault.pid() as i32).unwrap();
    rustix::process::kill_process(vault_pid, rustix::process::Signal::STOP).unwrap();
    let mut run = agent.spawn_run(&vault, &["--service", "web", "--", "true"]);
    wait_for("the agent to ask the vault", || agent.log_text().contains("asking the vault for a task").then_some(()));
    kill9(&mut run);
    rustix::process::kill_process(vault_pid, rustix::process::Signal::CONT).unwrap();
    no_task_left(&vault, &agent);
    let audit = vault.hush(&["audit", "--format", "json"]);
    assert_eq!(audit.ok().matches("\"task_start\"").count(), audit.ok().matches("\"task_end\"").count(), "{audit:?}");
}

/// The attack of issue 8: a task of service `a` (root, as tasks are) tries to get into a task of
/// service `b` to read its secret: by its /proc entry, and by `nsenter` on its mount namespace.
#[test]
fn a_task_cannot_enter_another_services_task() {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    vault.hush_stdin(&["secret", "create", "b_secret", "-"], b"b-only").ok();
    vault.hush(&["service", "create", "a"]).ok();
    vault.hush(&["service", "create", "b", "--secret", "b_secret"]).ok();
    let mut b = agent.spawn_run(&vault, &["--service", "b", "--", "sh", "-c", "echo ready; exec sleep 3600"]);
    wait_ready(&mut b);
    // B's command as the host sees it, and a handle on its mount namespace, as if one had leaked to
    // A: an open descriptor that `hush run` of A inherits (so its task does too).
    let b_pid = *descendants(b.id()).last().expect("b's command");
    let b_ns = std::fs::File::open(format!("/proc/{b_pid}/ns/mnt")).unwrap();
    rustix::io::fcntl_setfd(&b_ns, rustix::io::FdFlags::empty()).unwrap();
    let pinned = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&b_ns));

    let attack = format!(
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
         cat /proc/{b_pid}/root/run/secrets/b_secret 2>&1; \
         nsenter -t {b_pid} -m cat /run/secrets/b_secret 2>&1; \
         nsenter --mount={pinned} cat /run/secrets/b_secret 2>&1; \
         ls /proc | grep -c '^[0-9]'"
    );
    let run = agent.run(&vault, &["--service", "a", "--", "sh", "-c", &attack]);
    let out = run.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["CapEff:\t00000000a80425fb", "CapBnd:\t00000000a80425fb", "NoNewPrivs:\t1"], "{out}");
    assert!(lines[3].contains("No such file or directory"), "B is not even visible: {out}");
    assert!(lines[4].contains("No such file or directory") || lines[4].contains("No such process"), "{out}");
    assert_eq!(lines[5], format!("nsenter: reassociate to namespace 'ns/mnt' failed: Operation not permitted"));
    // Its own PID namespace: init, sh, ls and grep.
    assert!(lines[6].parse::<u32>().unwrap() <= 4, "{out}");
    assert!(!out.contains("b-only"), "a task of a read b's secret: {out}");

    // What stops it is the capability set: with CAP_SYS_ADMIN kept, the same attack gets in.
    let enter = format!("nsenter --mount={pinned} cat /run/secrets/b_secret");
    let privileged = agent.run(&vault, &["--service", "a", "--cap-add", "SYS_ADMIN", "--", "sh", "-c", &enter]);
    assert_eq!(privileged.ok(), "b-only");
    kill9(&mut b);
}

/// Bad capability names are one error line naming `hush run`'s flag value, before any task starts.
#[test]
fn bad_capabilities_and_help_name_hush_run() {
    let (vault, agent) = setup();
    agent
        .run(&vault, &["--service", "web", "--cap-add", "bogus", "--", "true"])
        .fails_with("unknown capability: \"bogus\"");
    assert_eq!(node_state(&vault).1, 0);
    let help = agent.run(&vault, &["--help"]);
    assert!(help.ok().contains("Usage: hush run [OPTIONS] --service <SERVICE> -- <COMMAND>..."), "{help:?}");
    assert!(help.stdout.contains("--cap-add <CAP>") && help.stdout.contains("--stop-timeout"), "{help:?}");
    let missing = agent.run(&vault, &["--service", "web"]);
    assert!(missing.stderr.contains("Usage: hush run") && !missing.stderr.contains("hush-agent"), "{missing:?}");
}
