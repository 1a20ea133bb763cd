//! `systemctl restart hush-agent` under a real systemd, with the unit file we ship: a task reading
//! its secret every 10 ms sees no failed read across restarts (the connection and the state go
//! through systemd's file descriptor store and come back in `LISTEN_FDS`); each restart is in the
//! audit trail; the store is empty while an agent serves; a `kill -9` is restarted by systemd and
//! the task reads again without being restarted; `systemctl stop` ends the task and unmounts.
//!
//! systemd is not PID 1 on this machine: the test runs it as PID 1 of a Docker container
//! (`/lib/systemd/systemd`, the host's `/usr` bound read-only into an image imported from a
//! rootfs of symlinks; host network, so the agent reaches the test vault on loopback). The unit
//! is `packaging/systemd/hush-agent.service` as shipped; a drop-in points `ExecStart=` at the
//! binary under test and gives it its arguments.

use hush_tests::loops::{self, Read, ReadLoop};
use hush_tests::{Run, TestVault, marker, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE: &str = "hush-test/systemd:1";

/// The capabilities `--privileged` would give, less those this machine's root does not have
/// (CAP_SYS_RESOURCE: asking for it fails the container) and those Docker 20.10 cannot name.
const CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
];

fn docker(args: &[&str]) -> Run {
    Run::from_command(Command::new("docker").args(args))
}

/// A root file system of mount points and the merged-/usr symlinks, imported once.
fn image() {
    if docker(&["image", "inspect", IMAGE]).status.success() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    for sub in ["etc/systemd/system", "run", "tmp", "proc", "sys", "dev", "var/lib", "var/log", "root", "usr"] {
        std::fs::create_dir_all(root.join(sub)).expect("rootfs dir");
    }
    for (link, target) in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")] {
        std::os::unix::fs::symlink(target, root.join(link)).expect("rootfs link");
    }
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).expect("os-release");
    for file in ["passwd", "group"] {
        std::fs::copy(Path::new("/etc").join(file), root.join("etc").join(file)).expect("rootfs file");
    }
    std::fs::write(root.join("etc/machine-id"), "").expect("machine-id");
    let tar = dir.path().join("root.tar");
    Run::from_command(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".")).ok();
    Run::from_command(Command::new("docker").arg("import").arg(&tar).arg(IMAGE)).ok();
}

/// systemd as PID 1 of a container, removed on drop (with everything it runs).
struct Manager {
    name: String,
    work: tempfile::TempDir,
}

impl Manager {
    /// Boots systemd with `units` as its `/etc/systemd/system`; waits until it runs.
    fn boot(units: &Path, work: tempfile::TempDir, bin_dir: &Path) -> Self {
        let name = format!("hush-systemd-{}-{}", std::process::id(), marker("c").to_lowercase());
        let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", "host", "--device", "/dev/fuse"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for cap in CAPS {
            args.extend(["--cap-add".into(), cap.to_string()]);
        }
        let bind = |from: &Path, to: &str, mode: &str| format!("{}:{to}{mode}", from.display());
        let work_dir = work.path().display().to_string();
        let bin = bin_dir.display().to_string();
        args.extend(
            [
                "--security-opt",
                "seccomp=unconfined",
                "--security-opt",
                "apparmor=unconfined",
                "-e",
                "container=docker",
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/tmp",
                "-v",
                "/usr:/usr:ro",
                "-v",
                "/sys/fs/cgroup:/sys/fs/cgroup",
                // The agent follows the engine's containers (none of this test's).
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
            ]
            .map(String::from),
        );
        args.extend(["-v".into(), bind(units, "/etc/systemd/system", ":ro")]);
        args.extend(["-v".into(), bind(work.path(), &work_dir, "")]);
        args.extend(["-v".into(), bind(bin_dir, &bin, ":ro")]);
        args.extend([IMAGE.into(), "/lib/systemd/systemd".into(), "--unit=hush-test.target".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args).ok();
        let manager = Self { name, work };
        wait_for("systemd to boot in the container", || {
            let state = manager.exec(&["systemctl", "is-system-running"]).stdout.trim().to_string();
            matches!(state.as_str(), "running" | "degraded").then_some(())
        });
        manager
    }

    fn exec(&self, command: &[&str]) -> Run {
        let mut args = vec!["exec", &self.name];
        args.extend_from_slice(command);
        docker(&args)
    }

    fn systemctl(&self, args: &[&str]) -> Run {
        let mut command = vec!["systemctl"];
        command.extend_from_slice(args);
        self.exec(&command)
    }

    fn property(&self, name: &str) -> String {
        self.systemctl(&["show", "--property", name, "--value", "hush-agent"]).ok().trim().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.name]).output();
    }
}

fn audit_restarts(vault: &TestVault) -> Vec<String> {
    let out = vault.hush(&["audit", "--format", "json"]);
    let entries: Vec<Value> = serde_json::from_str(out.ok()).expect("audit json");
    entries
        .iter()
        .filter(|e| e["op"] == "agent_restart")
        .map(|e| format!("{} {}", e["node"].as_str().unwrap_or(""), e["reason"].as_str().unwrap_or("")))
        .collect()
}

#[test]
fn systemctl_restart_fails_no_read() {
    if !Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
        panic!("docker does not answer here: this test runs systemd in a container and cannot run without it");
    }
    image();
    let vault = TestVault::start_new();
    let value = marker("s");
    vault.hush_stdin(&["secret", "create", "s", "-"], value.as_bytes()).ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let token = vault.hush(&["node", "join-token", "-q"]).ok().trim().to_string();

    let work = tempfile::tempdir().expect("work dir");
    let token_file = work.path().join("join-token");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&token_file).expect("token");
        std::io::Write::write_all(&mut file, token.as_bytes()).expect("token written");
    }
    let agent_bin = hush_tests::bin("hush-agent");
    let bin_dir: PathBuf = agent_bin.parent().expect("bin dir").to_path_buf();
    let log = work.path().join("agent.log");
    // The unit as shipped, a drop-in for this test, and a target that starts nothing.
    let units = work.path().join("units");
    std::fs::create_dir_all(units.join("hush-agent.service.d")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/hush-agent.service"),
        units.join("hush-agent.service"),
    )
    .expect("the shipped unit");
    std::fs::write(units.join("hush-test.target"), "[Unit]\nDescription=nothing but the test\n").unwrap();
    std::fs::write(
        units.join("hush-agent.service.d/test.conf"),
        format!(
            "[Service]\nEnvironment=\"HUSH_AGENT_ARGS=--vault {} --join-token-file {}\"\nExecStart=\nExecStart={} \
             --state-dir /var/lib/hush-agent --mount-root /run/hush $HUSH_AGENT_ARGS\n\
             StandardOutput=append:{log}\nStandardError=append:{log}\n",
            vault.addr,
            token_file.display(),
            agent_bin.display(),
            log = log.display(),
        ),
    )
    .unwrap();
    let manager = Manager::boot(&units, work, &bin_dir);

    // Type=notify: `systemctl start` returns once the agent said READY=1.
    let started = manager.systemctl(&["start", "hush-agent"]);
    assert!(started.status.success(), "{}\n{}", started.stderr, manager.log());
    assert_eq!(manager.property("ActiveState"), "active", "{}", manager.log());

    // A task inside the manager's machine reading every 10 ms.
    let agent = agent_bin.display().to_string();
    let mut reader = ReadLoop::spawn(Command::new("docker").args([
        "exec",
        &manager.name,
        &agent,
        "run",
        "--stop-timeout",
        "1",
        "--service",
        "web",
        "--",
        "sh",
        "-c",
        &loops::script("/run/secrets/s"),
    ]));
    reader.wait_value(&value, Instant::now() - Duration::from_secs(60));

    const RESTARTS: usize = 3;
    let mut pids = vec![manager.property("MainPID")];
    let mut windows = Vec::new();
    for _ in 0..RESTARTS {
        let before = Instant::now();
        let restarted = manager.systemctl(&["restart", "hush-agent"]);
        assert!(restarted.status.success(), "{}\n{}", restarted.stderr, manager.log());
        let after = Instant::now();
        pids.push(manager.property("MainPID"));
        // Reads went on after the restart...
        wait_for("reads after the restart", || {
            (reader.reads().iter().filter(|(at, _)| *at > after).count() > 5).then_some(())
        });
        windows.push((before, Instant::now()));
        // ...and what the new agent took is no longer in the store.
        assert_eq!(manager.property("NFileDescriptorStore"), "0", "{}", manager.log());
    }
    // The figures for the closing note: the longest wait between two reads across each restart,
    // against the same-length window just before the first one.
    let gap = |from: Instant, to: Instant| {
        let at: Vec<Instant> = reader.reads().iter().map(|(at, _)| *at).filter(|at| *at >= from && *at <= to).collect();
        at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    };
    let stalls: Vec<Duration> = windows.iter().map(|(from, to)| gap(*from, *to)).collect();
    let (first, end) = windows[0];
    let baseline = gap(first - (end - first), first);
    eprintln!("longest read gap across each systemctl restart: {stalls:?}; same-length window before: {baseline:?}");
    let failed = reader.reads().iter().filter(|(_, r)| *r == Read::Fail).count();
    assert_eq!(failed, 0, "failed reads through systemctl restart\n{}", manager.log());
    pids.dedup();
    assert_eq!(pids.len(), RESTARTS + 1, "each restart has a new main process: {pids:?}");
    let log = manager.log();
    assert_eq!(log.matches("handed over to systemd's file descriptor store: exiting").count(), RESTARTS, "{log}");
    let status = manager.exec(&[&agent, "status", "--state-dir", "/var/lib/hush-agent"]);
    assert!(status.ok().contains("through systemd's file descriptor store (1 tasks"), "{}", status.stdout);
    // Each takeover is in the audit trail, for this node.
    let restarts = wait_for("the restarts in the audit trail", || {
        let restarts = audit_restarts(&vault);
        (restarts.len() >= RESTARTS).then_some(restarts)
    });
    assert_eq!(restarts.len(), RESTARTS, "{restarts:#?}");
    let node = restarts[0].split(' ').next().unwrap().to_string();
    assert!(!node.is_empty(), "{restarts:#?}");
    assert!(
        restarts.iter().all(|r| r.starts_with(&format!("{node} took over from pid "))
            && r.contains("through systemd's file descriptor store")),
        "{restarts:#?}"
    );

    // A crash: systemd restarts the agent (Restart=on-failure), which mounts again and repairs
    // the task's view in place; the same reading process reads again.
    let killed = Instant::now();
    manager.systemctl(&["kill", "--signal=SIGKILL", "hush-agent"]).ok();
    let outage = reader.outage_after(killed, Duration::from_secs(30)).expect("the task reads again after the crash");
    eprintln!("kill -9: {} failed reads, reading again {:?} after the kill", outage.failed_reads, outage.back - killed);
    assert!(reader.still_running(), "the same reading process");
    let recovered = wait_for("the crash recovery in the audit trail", || {
        audit_restarts(&vault).into_iter().find(|r| r.contains("recovered after a crash"))
    });
    assert!(recovered.contains("1 views repaired"), "{recovered}");

    // Its `hush run` took the task back from each new agent (through the default socket,
    // /run/hush-agent.sock, which the task's own /run overlays), so it is not stopped
    // `--reconnect-timeout` after a restart.
    wait_for("hush run to take its task back after every restart", || {
        (manager.log().matches("task resumed by its hush run").count() == RESTARTS + 1).then_some(())
    });

    // A stop is a stop: the task ends, nothing is kept in the store, nothing stays mounted.
    manager.systemctl(&["stop", "hush-agent"]).ok();
    wait_for("the task to end with the agent", || (!reader.still_running()).then_some(()));
    assert_eq!(manager.property("NFileDescriptorStore"), "0");
    let mounts = manager.exec(&["cat", "/proc/self/mountinfo"]).ok().to_string();
    assert!(!mounts.contains(" /run/hush "), "{mounts}");
}

/// What an agent takes from `LISTEN_FDS` is checked like a hand-over: a descriptor named
/// `hush-fuse` that is not `/dev/fuse`, or a state that is not a sealed memfd, is refused in one
/// line and the agent starts afresh and serves. Forged here without systemd (as any process
/// that starts the agent could), the way systemd passes them: `LISTEN_PID`, fds from 3 on.
#[test]
fn a_forged_store_is_refused_and_the_agent_starts_afresh() {
    let vault = TestVault::start_new();
    let mut agent = hush_tests::TestAgent::join(&vault);
    let value = marker("s");
    vault.hush_stdin(&["secret", "create", "s", "-"], value.as_bytes()).ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    agent.stop();
    let plain = agent.dir.path().join("not-a-memfd");
    std::fs::write(&plain, b"HUSHSTAT").unwrap();
    for (device, why) in [
        ("/dev/null", "systemd's file descriptor store passed no FUSE connection: starting afresh"),
        (
            "/dev/fuse",
            "cannot read the hand-over in systemd's store (malformed hand-over state: not a memfd): starting afresh",
        ),
    ] {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&agent.log).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "export LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=hush-fuse:hush-state; exec \"$0\" \"$@\" 3<>{device} 4<{}",
                plain.display()
            ))
            .arg(hush_tests::bin("hush-agent"))
            .arg("--state-dir")
            .arg(agent.state_dir())
            .arg("--mount-root")
            .arg(agent.mount_root())
            .arg("--socket")
            .arg(agent.socket())
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let serving = hush_tests::read_line_with(child.stdout.take().unwrap(), "hush-agent: node ");
        assert!(serving.is_some(), "{}", agent.log_text());
        let run = agent.run(&vault, &["--service", "web", "--", "cat", "/run/secrets/s"]);
        assert_eq!(run.ok(), value);
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
        let log = agent.log_text();
        assert_eq!(log.lines().filter(|l| l.starts_with("hush-agent: ") && l.contains(why)).count(), 1, "{log}");
    }
}
