//! The node side end to end: real vault, real agent, real FUSE mount, real `hush run` tasks in
//! their own mount namespaces.

use hush_tests::{TestAgent, TestVault, files_containing, marker, wait_for};
use std::io::{BufRead, BufReader, Write};

fn setup() -> (TestVault, TestAgent) {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    (vault, agent)
}

fn unique(tag: &str) -> String {
    format!(
        "hush-e2e-{tag}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

#[test]
fn task_reads_its_secrets_and_configs_with_their_modes() {
    let (vault, agent) = setup();
    let value = marker("task");
    vault.hush_stdin(&["secret", "create", "db_password", "-"], value.as_bytes()).ok();
    vault.hush_stdin(&["config", "create", "app_conf", "-"], b"listen 8080\n").ok();
    let conf_target = format!("/etc/{}.conf", unique("conf"));
    vault
        .hush(&[
            "service",
            "create",
            "web",
            "--secret",
            "db_password",
            "--secret",
            "source=db_password,target=server.key,uid=65534,gid=65534,mode=0400",
            "--config",
            &format!("source=app_conf,target={conf_target},mode=0440"),
        ])
        .ok();
    let script = format!(
        "cat /run/secrets/db_password; echo; stat -c '%u %g %a' /run/secrets/db_password /run/secrets/server.key {conf_target}; cat {conf_target}; ls {}",
        agent.mount_root().display()
    );
    let run = agent.run(&vault, &["--service", "web", "--", "sh", "-c", &script]);
    let out = run.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], value);
    assert_eq!(lines[1], "0 0 444");
    assert_eq!(lines[2], "65534 65534 400");
    assert_eq!(lines[3], "0 0 440");
    assert_eq!(lines[4], "listen 8080");
    assert_eq!(lines.len(), 5, "the mount root must look empty inside the task: {out}");
    // The host was not touched, and the task is gone once the command exits.
    assert!(!std::path::Path::new(&conf_target).exists());
    // (Only the service directories, for containers, stay.)
    let only_services =
        || std::fs::read_dir(agent.mount_root()).unwrap().map(|e| e.unwrap().file_name()).eq(["services"]);
    wait_for("task directory removed", || only_services().then_some(()));

    // Exit status is the command's.
    let run = agent.run(&vault, &["--service", "web", "--", "sh", "-c", "exit 7"]);
    assert_eq!(run.status.code(), Some(7));

    // Non-root users in the task are held to the file modes by the kernel.
    let cat_as = |uid: &str| {
        let args = ["--reuid", uid, "--regid", uid, "--clear-groups", "cat", "/run/secrets/server.key"];
        agent.run(&vault, &[&["--service", "web", "--", "setpriv"][..], &args].concat())
    };
    assert!(!cat_as("1234").status.success(), "uid 1234 read a 0400 file of uid 65534");
    let run = cat_as("65534");
    assert_eq!(run.ok(), value);
}

#[test]
fn only_the_task_reads_its_files() {
    let (vault, agent) = setup();
    vault.hush_stdin(&["secret", "create", "s", "-"], b"only-for-the-task").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let mut task = agent.spawn_run(&vault, &["--service", "web", "--", "sh", "-c", "cat /run/secrets/s; echo; read x"]);
    let mut out = BufReader::new(task.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "only-for-the-task");

    // Host root, outside the task: refused by the filesystem itself.
    let task_dir = agent.task_dirs().into_iter().next().expect("task dir");
    let file = task_dir.join("root/run/secrets/s");
    let err = std::fs::read(&file).expect_err("host root read a task's secret");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    // A non-root host user too.
    let nobody = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "cat"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!nobody.status.success());
    // Another task: the mount root is hidden, and the path does not reach the file.
    let other = agent.run(&vault, &["--service", "web", "--", "cat", file.to_str().unwrap()]);
    assert!(!other.status.success(), "another task read this task's secret: {other:?}");

    task.stdin.take().unwrap().write_all(b"done\n").unwrap();
    assert!(task.wait().unwrap().success());
}

#[test]
fn rotation_is_seen_by_a_running_task() {
    let (vault, agent) = setup();
    vault.hush_stdin(&["secret", "create", "db_password", "-"], b"version-one").ok();
    vault.hush(&["service", "create", "web", "--secret", "db_password"]).ok();
    let mut task = agent.session(&vault, "web", "cat /run/secrets/db_password");
    let mut read = || task.ask();
    assert_eq!(read(), "version-one");
    vault.hush_stdin(&["secret", "rotate", "db_password", "-"], b"version-two-longer").ok();
    wait_for("rotation seen", || (read() == "version-two-longer").then_some(()));
    assert!(task.finish().success());
}

#[test]
fn tasks_keep_reading_through_a_vault_outage_and_new_tasks_fail_clearly() {
    let (mut vault, mut agent) = setup();
    vault.hush_stdin(&["secret", "create", "s", "-"], b"survives").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let mut task = agent.session(&vault, "web", "cat /run/secrets/s");
    let mut read = || task.ask();
    assert_eq!(read(), "survives");
    let addr = vault.addr.clone();
    vault.kill9();
    assert_eq!(read(), "survives");
    let refused = agent.run(&vault, &["--service", "web", "--", "true"]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("vault is unreachable"), "{refused:?}");

    // Back on the same address: the agent reconnects by itself and catches up.
    vault.start_on(&addr);
    vault.hush_stdin(&["secret", "rotate", "s", "-"], b"after-outage").ok();
    wait_for("catch-up after reconnect", || (read() == "after-outage").then_some(()));
    task.finish();

    // An agent restart reuses its identity: no token needed.
    assert!(agent.stop().success());
    agent.start(&[]).expect("restart with the saved identity");
    assert_eq!(agent.run(&vault, &["--service", "web", "--", "cat", "/run/secrets/s"]).ok(), "after-outage");
    assert_eq!(vault.hush(&["node", "ls", "-q"]).ok().lines().count(), 1);
}

#[test]
fn removed_node_is_cut_off() {
    let (vault, mut agent) = setup();
    vault.hush_stdin(&["secret", "create", "s", "-"], b"v").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    assert!(vault.hush(&["node", "ls"]).ok().contains("Ready"));
    let node = vault.hush(&["node", "ls", "-q"]).ok().trim().to_string();
    vault.hush(&["node", "rm", &node]).ok();
    let status = agent.wait_exit();
    assert!(!status.success());
    assert!(agent.log_text().contains("this node was removed from the vault"), "{}", agent.log_text());
    // Its certificate is refused from now on: a restarted agent is told so and exits.
    if agent.start(&[]).is_ok() {
        assert!(!agent.wait_exit().success());
    }
    assert_eq!(agent.log_text().matches("this node was removed from the vault").count(), 2, "{}", agent.log_text());
}

#[test]
fn bad_joins_and_bad_tasks_are_refused() {
    let vault = TestVault::start_new();
    let token = vault.hush(&["node", "join-token", "-q"]).ok().trim().to_string();
    vault.hush(&["node", "join-token", "--rotate"]).ok();
    let mut agent = TestAgent::join(&vault);
    let _ = agent.stop();

    let mut stale = TestAgent::join(&vault);
    let _ = stale.stop();
    std::fs::remove_dir_all(stale.state_dir()).unwrap();
    let err = stale.start_joining(&vault, &token).unwrap_err();
    assert!(err.stderr.contains("wrong or has been revoked"), "{}", err.stderr);

    let other = TestVault::start_new();
    let foreign = other.hush(&["node", "join-token", "-q"]).ok().trim().to_string();
    std::fs::remove_dir_all(stale.state_dir()).ok();
    let err = stale.start_joining(&vault, &foreign).unwrap_err();
    assert!(err.stderr.contains("fingerprint mismatch"), "{}", err.stderr);
    let err = stale.start_joining(&vault, "nonsense").unwrap_err();
    assert!(err.stderr.contains("malformed"), "{}", err.stderr);

    agent.start(&[]).unwrap_or_else(|e| panic!("restart: {}", e.stderr));
    agent.run(&vault, &["--service", "nope", "--", "true"]).fails_with("service nope not found");
    vault.hush_stdin(&["secret", "create", "s", "-"], b"v").ok();
    vault.hush(&["service", "create", "x", "--secret", "source=s,target=../../etc/shadow"]).fails_with("escapes");
    vault
        .hush(&["service", "create", "x", "--secret", "s", "--secret", "source=s,target=/run/secrets/s"])
        .fails_with("same target");
    vault.hush(&["service", "create", "x", "--secret", "source=s,mode=400"]).fails_with("leading 0");
    vault.hush(&["service", "create", "x", "--secret", "missing"]).fails_with("secret missing not found");
    assert_eq!(vault.hush(&["service", "ls", "-q"]).ok(), "");
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    vault.hush(&["secret", "rm", "s"]).fails_with("secret 's' is in use by the following service: web");
}

#[test]
fn no_plaintext_in_the_agent_state_dir_or_log() {
    let (vault, agent) = setup();
    let value = marker("agent");
    vault.hush_stdin(&["secret", "create", "s", "-"], value.as_bytes()).ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    assert_eq!(agent.run(&vault, &["--service", "web", "--", "cat", "/run/secrets/s"]).ok(), value);
    assert!(files_containing(&agent.state_dir(), value.as_bytes()).is_empty());
    assert!(!agent.log_text().contains(&value));
    assert!(!vault.log_text().contains(&value));
}

#[test]
fn config_at_its_default_target_directly_under_root() {
    let (vault, agent) = setup();
    // The config's name is its default target's: /<name>, which the host must never get.
    let name = unique("rootconf");
    let target = std::path::PathBuf::from(format!("/{name}"));
    vault.hush_stdin(&["config", "create", &name, "-"], b"listen 8080\n").ok();
    vault.hush(&["service", "create", "web", "--config", &name]).ok();
    // /proc still works in the task (ps reads it), and the mount root is still hidden.
    let script = format!(
        "cat {target}; head -n 1 /proc/self/status; ps -o comm= -p $$; ls -A {mount_root}",
        target = target.display(),
        mount_root = agent.mount_root().display()
    );
    let run = agent.run(&vault, &["--service", "web", "--", "sh", "-c", &script]);
    let out = run.ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["listen 8080", "Name:\thead", "sh"], "the mount root must look empty inside the task");
    assert!(!target.exists(), "the host has no {}", target.display());
}

#[test]
fn service_update_reaches_a_running_task_live() {
    let (vault, agent) = setup();
    vault.hush_stdin(&["secret", "create", "first", "-"], b"one").ok();
    vault.hush_stdin(&["secret", "create", "second", "-"], b"two").ok();
    vault.hush(&["service", "create", "web", "--secret", "first"]).ok();
    let mut task = agent.session(&vault, "web", "ls /run/secrets | tr '\\n' ' '");
    let mut list = || task.ask();
    assert_eq!(list(), "first");
    vault.hush(&["service", "update", "web", "--secret-add", "second"]).ok();
    wait_for("added secret visible", || (list() == "first second").then_some(()));
    vault.hush(&["service", "update", "web", "--secret-rm", "first"]).ok();
    wait_for("removed secret gone", || (list() == "second").then_some(()));
    vault
        .hush(&["service", "update", "web", "--secret-rm", "nope"])
        .fails_with("service web has no secret reference \"nope\"");
    assert!(task.finish().success());
}

#[test]
fn each_node_gets_only_its_own_tasks_files() {
    let vault = TestVault::start_new();
    let (a, b) = (TestAgent::join(&vault), TestAgent::join(&vault));
    assert_eq!(vault.hush(&["node", "ls", "-q"]).ok().lines().count(), 2);
    vault.hush_stdin(&["secret", "create", "s", "-"], b"for-a-only").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let mut task = a.session(&vault, "web", "cat /run/secrets/s");
    assert_eq!(task.ask(), "for-a-only");
    // Node B runs no task, so it holds no task directory; both serve the directory of the
    // service they may run (for its containers).
    let entries = |agent: &TestAgent| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(agent.mount_root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(entries(&b), ["services"]);
    assert_eq!(entries(&a).len(), 2);
    assert!(b.mount_root().join("services/web").is_dir());
    // Both serve tasks at once.
    assert_eq!(b.run(&vault, &["--service", "web", "--", "cat", "/run/secrets/s"]).ok(), "for-a-only");
    assert!(task.finish().success());
}
