//! Agent restarts nobody notices: a `hush run` task and a Docker container read their secret
//! every 10 ms through graceful restarts (a second agent with the same state dir takes over the
//! running one's FUSE connection), and no read fails; a hand-over in a format this build does not
//! know is refused in one line and the agent starts afresh; the hand-over socket refuses a peer
//! that is not root, tried with a real unprivileged uid.

use hush_tests::docker::{self, Container, Engine};
use hush_tests::{Run, TestAgent, TestVault, marker, wait_for};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Reads `/run/secrets/s` every 10 ms; prints `FAIL` for a failed read, `VALUE v` when the
/// value changes and `READS n` every 20 reads.
const READER: &str = "last=; n=0; while :; do if v=$(cat /run/secrets/s 2>&1); then \
    [ \"$v\" = \"$last\" ] || { echo \"VALUE $v\"; last=$v; }; else echo \"FAIL $v\"; fi; \
    n=$((n+1)); [ $((n % 20)) -ne 0 ] || echo \"READS $n\"; sleep 0.01; done";

/// Lines a reader printed, collected on a thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(&self, out: impl Read + Send + 'static) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn failures(&self) -> Vec<String> {
        self.all().into_iter().filter(|l| l.starts_with("FAIL")).collect()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn wait_value(&self, value: &str) {
        let want = format!("VALUE {value}");
        wait_for(&format!("the reader to see {value}"), || self.all().contains(&want).then_some(()));
    }
}

/// A vault, an agent, a secret `s` and a service `web` using it.
fn setup() -> (TestVault, TestAgent, String) {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    let value = marker("s");
    vault.hush_stdin(&["secret", "create", "s", "-"], value.as_bytes()).ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let dir = agent.mount_root().join("services/web");
    wait_for("the service directory", || dir.is_dir().then_some(()));
    (vault, agent, value)
}

/// A task reading in a loop, its output followed.
fn reader_task(vault: &TestVault, agent: &TestAgent) -> (Child, Lines) {
    let mut child = agent.spawn_run(vault, &["--service", "web", "--", "sh", "-c", READER]);
    let lines = Lines::default();
    lines.follow(child.stdout.take().expect("piped"));
    (child, lines)
}

/// A container of `web` reading in a loop; its output comes from `docker logs -f`.
fn reader_container(vault: &TestVault, agent: &TestAgent) -> (Container, Child, Lines) {
    let mut mounts = vault.command();
    mounts.env("HUSH_MOUNT_ROOT", agent.mount_root()).args(["service", "mounts", "web", "--format", "docker"]);
    let flags = Run::from_command(&mut mounts).ok().to_string();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let image = docker::image();
    let container = Container::run_detached(
        Engine::Docker,
        &[&["--network", "none"], &flags[..], &[&image, "sh", "-c", READER]].concat(),
    );
    let mut logs = Command::new("docker")
        .args(["logs", "-f", &container.id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker logs");
    let lines = Lines::default();
    lines.follow(logs.stdout.take().expect("piped"));
    (container, logs, lines)
}

/// Waits until every reader has seen `value`, then lets them read a while longer.
fn let_them_read(readers: &[&Lines], value: &str) {
    for lines in readers {
        lines.wait_value(value);
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// One graceful restart, then ten in a row: the old agent exits 0 within 5 s each time, no read
/// fails in the task or the container, a rotation right after a restart reaches both, and a
/// restart while the vault is down still serves what the agent had.
#[test]
fn graceful_restarts_fail_no_read() {
    let (mut vault, mut agent, value) = setup();
    let (mut task, task_lines) = reader_task(&vault, &agent);
    let (_container, mut logs, container_lines) = reader_container(&vault, &agent);
    let_them_read(&[&task_lines, &container_lines], &value);

    let (status, took) = agent.restart(&[]);
    assert!(status.success(), "the old agent exited with {status}");
    assert!(took < Duration::from_secs(5), "the hand-over took {took:?}");
    assert!(agent.log_text().contains("took over from the running agent"), "{}", agent.log_text());
    let status = Run::from_command(
        Command::new(hush_tests::bin("hush-agent")).args(["status", "--state-dir"]).arg(agent.state_dir()),
    );
    let line = status.ok();
    assert!(
        line.starts_with("last start: took over from pid ") && line.contains("(1 tasks, 1 containers; 1 hand-overs"),
        "{line}"
    );
    let_them_read(&[&task_lines, &container_lines], &value);
    assert_eq!(task_lines.failures(), Vec::<String>::new(), "the task saw failed reads");
    assert_eq!(container_lines.failures(), Vec::<String>::new(), "the container saw failed reads");

    let before = (task_lines.count(), container_lines.count());
    for i in 0..10 {
        let (status, took) = agent.restart(&[]);
        assert!(status.success() && took < Duration::from_secs(5), "restart {i}: {status} after {took:?}");
    }
    // A rotation right after a restart reaches both.
    let rotated = marker("rotated");
    vault.hush_stdin(&["secret", "rotate", "s", "-"], rotated.as_bytes()).ok();
    let_them_read(&[&task_lines, &container_lines], &rotated);
    assert_eq!(task_lines.failures(), Vec::<String>::new(), "the task saw failed reads");
    assert_eq!(container_lines.failures(), Vec::<String>::new(), "the container saw failed reads");
    assert!(task_lines.count() > before.0 && container_lines.count() > before.1);

    // The vault down, then a restart: the new agent serves what it was handed, reads go on.
    vault.kill9();
    let (status, _) = agent.restart(&[]);
    assert!(status.success());
    let reads = (task_lines.count(), container_lines.count());
    wait_for("reads after a restart without a vault", || {
        (task_lines.count() > reads.0 + 1 && container_lines.count() > reads.1 + 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(task_lines.failures(), Vec::<String>::new(), "the task saw failed reads without a vault");
    assert_eq!(container_lines.failures(), Vec::<String>::new(), "the container saw failed reads without a vault");
    // The task is still the one started before the first restart.
    assert!(task.try_wait().unwrap().is_none(), "hush run ended");
    let _ = task.kill();
    let _ = task.wait();
    let _ = logs.kill();
    let _ = logs.wait();
}

/// `hush audit --format json` entries of `op`.
fn audit_of(vault: &TestVault, op: &str) -> Vec<serde_json::Value> {
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(vault.hush(&["audit", "--format", "json"]).ok()).expect("audit json");
    entries.into_iter().filter(|e| e["op"] == op).collect()
}

/// Audit events still waiting in the agent when it hands over are its successor's to deliver:
/// with the vault down (so nothing can be delivered), a task opens its secret exactly 7 times,
/// the agent is restarted twice (the events go through two hand-overs), the vault comes back,
/// and `hush audit` shows exactly 7 opens for that task. Each takeover is an `agent_restart`
/// entry of the node.
#[test]
fn audit_events_waiting_at_a_handover_reach_the_vault_with_exact_counts() {
    let (mut vault, mut agent, _value) = setup();
    let mut session = agent.session(&vault, "web", "cat /run/secrets/s >/dev/null && printf ok");
    let task = wait_for("the task's directory", || agent.task_dirs().pop())
        .file_name()
        .expect("task dir")
        .to_string_lossy()
        .into_owned();
    let addr = vault.addr.clone();
    vault.kill9();
    for _ in 0..7 {
        assert_eq!(session.ask(), "ok");
    }
    for _ in 0..2 {
        let (status, _) = agent.restart(&[]);
        assert!(status.success());
    }
    vault.start_on(&addr);
    let opens = |vault: &TestVault| -> u64 {
        audit_of(vault, "open")
            .iter()
            .filter(|e| e["task"] == task.as_str())
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum()
    };
    wait_for("the opens in the audit trail", || (opens(&vault) >= 7).then_some(()));
    // A little longer: nothing more may arrive (no duplicate delivery).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(opens(&vault), 7, "{}", agent.log_text());
    let restarts = audit_of(&vault, "agent_restart");
    let reasons: Vec<&str> = restarts.iter().map(|e| e["reason"].as_str().unwrap_or("")).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.starts_with("took over from pid ") && r.contains("(1 tasks, 0 containers")),
        "{reasons:?}"
    );
    assert!(restarts.iter().all(|e| e["node"] == restarts[0]["node"] && e["node"] != ""), "{restarts:?}");
    assert!(session.finish().success());
}

/// Run by the tests below as a separate process (`HUSH_RESTART_HELPER` says what to do): a fake
/// predecessor offering an unknown format, or a client of the hand-over socket.
#[test]
#[ignore = "a helper process of the other tests"]
fn helper() {
    // Straight to the descriptor: the test harness may capture `println!`.
    let say = |line: String| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let socket = std::env::var("HUSH_RESTART_SOCKET").expect("HUSH_RESTART_SOCKET");
    match std::env::var("HUSH_RESTART_HELPER").as_deref() {
        // A predecessor from the future: "HUSHGIVE", version 999, no descriptors.
        Ok("predecessor") => {
            let _ = std::fs::remove_file(&socket);
            let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
            say("listening".to_string());
            let (mut stream, _) = listener.accept().expect("accept");
            let mut hello = [0u8; 16];
            stream.read_exact(&mut hello).expect("hello");
            let mut offer = b"HUSHGIVE".to_vec();
            offer.extend_from_slice(&999u32.to_le_bytes());
            offer.extend_from_slice(&0u32.to_le_bytes());
            stream.write_all(&offer).expect("offer");
            let mut answer = [0u8; 2];
            stream.read_exact(&mut answer).expect("answer");
            say(format!("answer {}", String::from_utf8_lossy(&answer)));
            let _ = std::fs::remove_file(&socket);
        }
        // Ask for a hand-over and say what came back.
        Ok("client") => match UnixStream::connect(&socket) {
            Err(e) => say(format!("connect failed: {e}")),
            Ok(mut stream) => {
                let mut hello = b"HUSHTAKE".to_vec();
                hello.extend_from_slice(&1u32.to_le_bytes());
                hello.extend_from_slice(&0u32.to_le_bytes());
                let _ = stream.write_all(&hello);
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut offer = [0u8; 8];
                match stream.read(&mut offer) {
                    Ok(0) => say("closed".to_string()),
                    Ok(_) => say(format!("offer {}", String::from_utf8_lossy(&offer))),
                    Err(e) => say(format!("read failed: {e}")),
                }
            }
        },
        other => panic!("unknown helper {other:?}"),
    }
}

/// This test binary again, running [`helper`].
fn helper_command(what: &str, socket: &std::path::Path) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", "helper", "--ignored", "--nocapture", "--test-threads=1"])
        .env("HUSH_RESTART_HELPER", what)
        .env("HUSH_RESTART_SOCKET", socket);
    command
}

/// A predecessor offering hand-over format 999: the new agent says so in one line, answers
/// "NO", and starts afresh (mounts, serves a task).
#[test]
fn an_unknown_handover_format_is_refused_cleanly() {
    let (vault, mut agent, value) = setup();
    agent.stop();
    let socket = agent.state_dir().join("handover.sock");
    let mut fake = helper_command("predecessor", &socket).stdout(Stdio::piped()).spawn().expect("helper");
    let mut out = BufReader::new(fake.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the fake predecessor did not start");
    }
    agent.start(&[]).expect("the agent starts afresh");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("answer NO"), "{rest}");
    assert!(fake.wait().unwrap().success());
    let log = agent.log_text();
    let refusal: Vec<&str> = log.lines().filter(|l| l.contains("format version 999")).collect();
    assert_eq!(
        refusal,
        [format!(
            "hush-agent: the running agent (pid {}) hands over in format version 999; this build reads versions 1 to 2: starting afresh",
            fake.id()
        )]
    );
    let run = agent.run(&vault, &["--service", "web", "--", "cat", "/run/secrets/s"]);
    assert_eq!(run.ok(), value);
}

/// The hand-over socket is 0600 in a 0700 state dir, and even reachable (the modes loosened) it
/// hands nothing to a peer that is neither root nor the agent's user: uid 65534 tries for real.
#[test]
fn the_handover_socket_refuses_other_users() {
    let (vault, agent, value) = setup();
    let socket = agent.state_dir().join("handover.sock");
    let as_nobody = |command: &mut Command| {
        let args: Vec<String> = std::iter::once(command.get_program().to_string_lossy().into_owned())
            .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        let envs: Vec<(String, String)> = command
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_string_lossy().into_owned(), v?.to_string_lossy().into_owned())))
            .collect();
        let output = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
            .args(&args)
            .envs(envs)
            .output()
            .expect("setpriv");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // As the agent leaves it: the socket cannot even be reached.
    let out = as_nobody(&mut helper_command("client", &socket));
    assert!(out.contains("connect failed: Permission denied"), "{out}");
    // Modes loosened (a mistake, or a hostile admin tool): reachable, and still refused.
    use std::os::unix::fs::PermissionsExt;
    let loosen = |path: &std::path::Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    for dir in [agent.dir.path(), &agent.state_dir()] {
        loosen(dir, 0o755).unwrap();
    }
    loosen(&socket, 0o777).unwrap();
    let out = as_nobody(&mut helper_command("client", &socket));
    // Closed unanswered (a reset when our request was still unread): no offer, no descriptor.
    assert!(out.contains("closed") || out.contains("Connection reset by peer"), "{out}");
    assert!(!out.contains("offer"), "{out}");
    let log = agent.log_text();
    assert!(log.contains("refused a hand-over request: uid 65534"), "{log}");
    assert!(!log.contains("handing over"), "{log}");
    // Still serving, still the same agent.
    let run = agent.run(&vault, &["--service", "web", "--", "cat", "/run/secrets/s"]);
    assert_eq!(run.ok(), value);
}
