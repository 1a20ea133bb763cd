//! `hush dev`: prints working export lines (vault and agent) and cleans up after itself.

use hush_tests::{Run, bin};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn dev_prints_exports_that_work_and_removes_its_data_on_exit() {
    let mut child = Command::new(bin("hush"))
        .args(["dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut exports = std::collections::HashMap::new();
    // Vault address, TLS bundle and the agent's socket.
    while exports.len() < 3 {
        let line = rx.recv_timeout(hush_tests::DEADLINE).expect("hush dev prints its exports");
        if let Some((key, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
            exports.insert(key.to_string(), value.to_string());
        }
    }
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
