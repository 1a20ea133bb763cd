//! `hush dev`: prints working export lines (vault and agent) and cleans up after itself.

use hush_tests::{Run, bin};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn dev_prints_exports_that_work_and_removes_its_data_on_exit() {
    let (mut child, exports, _stderr) = start_dev();
    let tls_dir = std::path::PathBuf::from(&exports["HUSH_TLS_DIR"]);
    let hush = |args: &[&str]| Run::from_command(Command::new(bin("hush")).envs(&exports).args(args));
    let created = Command::new(bin("hush"))
        .envs(&exports)
        .args(["secret", "create", "db_password", "/etc/hostname"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    assert!(hush(&["secret", "ls"]).ok().contains("db_password"));
    // The README's walkthrough ends in a task reading its secret through the dev agent.
    hush(&["service", "create", "web", "--secret", "db_password"]).ok();
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap();
    assert_eq!(hush(&["run", "--service", "web", "--", "cat", "/run/secrets/db_password"]).ok(), hostname);

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!tls_dir.exists(), "hush dev left its data behind");
}

/// Starts `hush dev` on a free port; returns it with its export lines.
fn start_dev() -> (std::process::Child, std::collections::HashMap<String, String>, std::process::ChildStderr) {
    let mut child = Command::new(bin("hush"))
        .args(["dev", "--listen", "127.0.0.1:0"])
        .env("HUSH_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut exports = std::collections::HashMap::new();
    while exports.len() < 3 {
        let line = rx.recv_timeout(hush_tests::DEADLINE).expect("hush dev prints its exports");
        if let Some((key, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
            exports.insert(key.to_string(), value.to_string());
        }
    }
    let stderr = child.stderr.take().unwrap();
    (child, exports, stderr)
}

#[test]
fn killed_dev_takes_its_agent_and_task_along_and_the_next_one_cleans_up() {
    let (mut dev, exports, _stderr) = start_dev();
    let dev_dir = std::path::PathBuf::from(&exports["HUSH_AGENT_SOCKET"]).parent().unwrap().to_path_buf();
    let hush = |args: &[&str]| Run::from_command(Command::new(bin("hush")).envs(&exports).args(args));
    hush(&["service", "create", "web"]).ok();
    let mut task = Command::new(bin("hush"))
        .envs(&exports)
        .args(["run", "--service", "web", "--stop-timeout", "1", "--", "sh", "-c", "echo ready; exec sleep 3600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(task.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready, "ready\n");
    let agents = children(dev.id());
    assert_eq!(agents.len(), 1, "one agent child: {agents:?}");

    dev.kill().unwrap();
    dev.wait().unwrap();
    // The agent gets SIGTERM as its parent dies, so it shuts down and its task is stopped.
    hush_tests::wait_for("the dev agent to exit", || is_dead(agents[0]).then_some(()));
    let output = task.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("the task was stopped"), "{output:?}");
    assert!(dev_dir.exists(), "a killed hush dev cannot remove its dir itself");

    // The next hush dev removes it (keys and admin bundle included).
    let (mut next, next_exports, stderr) = start_dev();
    assert!(!dev_dir.exists(), "the leftover dir {} is still there", dev_dir.display());
    let mut said = String::new();
    BufReader::new(stderr).read_line(&mut said).unwrap();
    assert!(said.starts_with("hush dev: removed ") && said.contains(&dev_dir.display().to_string()), "{said}");
    // Killed too (its clean stop is the test above); its dir goes once its agent is gone.
    let next_dir = std::path::PathBuf::from(&next_exports["HUSH_AGENT_SOCKET"]).parent().unwrap().to_path_buf();
    let next_agent = children(next.id());
    next.kill().unwrap();
    next.wait().unwrap();
    hush_tests::wait_for("the second dev agent to exit", || is_dead(next_agent[0]).then_some(()));
    std::fs::remove_dir_all(&next_dir).unwrap();
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .flat_map(|t| {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            children.split_whitespace().map(|p| p.parse().unwrap()).collect::<Vec<u32>>()
        })
        .collect()
}

/// Gone, or a zombie nobody reaps (PID 1 here reaps no orphans).
fn is_dead(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}
