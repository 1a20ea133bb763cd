//! `hush compose` end to end: a real vault and agent, compose files deployed, tasks started with
//! `hush run --service PROJECT_SERVICE` reading their files, re-deploys rotating live.

use hush_tests::{Run, TestAgent, TestVault, wait_for};
use std::path::Path;

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("hush-e2e-{tag}-{}-{nanos:x}", std::process::id())
}

fn compose(vault: &TestVault, dir: &Path, args: &[&str]) -> Run {
    Run::from_command(vault.command().current_dir(dir).arg("compose").args(args))
}

/// `secret ls`, `config ls` and `service ls` as one comparable text (IDs, names, versions).
fn state(vault: &TestVault) -> String {
    let list = |what: &str| {
        let json: serde_json::Value = serde_json::from_str(vault.hush(&[what, "ls", "--format", "json"]).ok()).unwrap();
        json.as_array()
            .unwrap()
            .iter()
            .map(|o| format!("{what} {} {} {} {}", o["ID"], o["Name"], o["Version"], o["Secrets"]))
            .collect::<Vec<_>>()
            .join("\n")
    };
    [list("secret"), list("config"), list("service")].join("\n")
}

fn version(vault: &TestVault, secret: &str) -> u64 {
    let json: serde_json::Value = serde_json::from_str(vault.hush(&["secret", "inspect", secret]).ok()).unwrap();
    json[0]["Version"]["Index"].as_u64().unwrap()
}

#[test]
fn compose_deploy_runs_tasks_and_redeploys_live() {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("Shop");
    std::fs::create_dir(&dir).unwrap();
    let web_conf = format!("/etc/{}.conf", unique("web"));
    let worker_conf = format!("/etc/{}.conf", unique("worker"));
    std::fs::write(dir.join("db.txt"), "db-pass-1").unwrap();
    std::fs::write(dir.join(".env"), "API_KEY=key-from-dotenv\n").unwrap();
    let file = |worker_secrets: &str| {
        format!(
            r#"
x-owner: &owner
  uid: "65534"
  gid: 65534
services:
  web:
    image: shop/web:1
    secrets:
      - db_password
      - source: api_key
        target: server.key
        <<: *owner
        mode: 0400
    configs:
      - source: app
        target: {web_conf}
        mode: 0440
  worker:
    image: shop/worker:1
    secrets: {worker_secrets}
    configs:
      - source: worker_conf
        target: {worker_conf}
secrets:
  db_password:
    file: ./db.txt
  api_key:
    environment: API_KEY
configs:
  app:
    content: "listen ${{PORT:-8080}}\n"
  worker_conf:
    content: queue=jobs
"#
        )
    };
    std::fs::write(dir.join("compose.yaml"), file("[db_password, api_key]")).unwrap();

    let out = compose(&vault, &dir, &["deploy"]).ok().to_string();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "Creating secret shop_api_key",
            "Creating secret shop_db_password",
            "Creating config shop_app",
            "Creating config shop_worker_conf",
            "Creating service shop_web",
            "Creating service shop_worker",
        ]
    );
    let ls = compose(&vault, &dir, &["ls"]).ok().to_string();
    assert_eq!(ls.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>(), ["shop", "2", "2", "2"], "{ls}");

    // A task of each service reads its files at their targets, with their modes.
    let script = format!(
        "cat /run/secrets/db_password; echo; cat /run/secrets/server.key; echo; cat {web_conf}; stat -c '%n %u %g %a' /run/secrets/db_password /run/secrets/server.key {web_conf}"
    );
    let run = agent.run(&vault, &["--service", "shop_web", "--", "sh", "-c", &script]);
    assert_eq!(
        run.ok().lines().collect::<Vec<_>>(),
        [
            "db-pass-1",
            "key-from-dotenv",
            "listen 8080",
            "/run/secrets/db_password 0 0 444",
            "/run/secrets/server.key 65534 65534 400",
            &format!("{web_conf} 0 0 440"),
        ]
    );
    let run = agent.run(
        &vault,
        &["--service", "shop_worker", "--", "sh", "-c", &format!("cat {worker_conf}; echo; ls /run/secrets")],
    );
    assert_eq!(run.ok().lines().collect::<Vec<_>>(), ["queue=jobs", "api_key", "db_password"]);

    // Re-deploying the unchanged file changes nothing.
    let before = state(&vault);
    assert_eq!(compose(&vault, &dir, &["deploy"]).ok(), "Project shop is up to date\n");
    assert_eq!(state(&vault), before);
    assert_eq!(version(&vault, "shop_db_password"), 1);

    // A changed secret file is a rotation, seen live by a running task.
    let mut task = agent.session(&vault, "shop_web", "cat /run/secrets/db_password");
    let mut read = || task.ask();
    assert_eq!(read(), "db-pass-1");
    std::fs::write(dir.join("db.txt"), "db-pass-2-rotated").unwrap();
    assert_eq!(compose(&vault, &dir, &["deploy"]).ok(), "Rotating secret shop_db_password (version 2)\n");
    wait_for("rotation seen by the running task", || (read() == "db-pass-2-rotated").then_some(()));
    assert!(task.finish().success());
    assert_eq!(version(&vault, "shop_api_key"), 1);

    // Services follow the file: worker loses db_password.
    std::fs::write(dir.join("compose.yaml"), file("[api_key]")).unwrap();
    assert_eq!(compose(&vault, &dir, &["deploy"]).ok(), "Updating service shop_worker\n");
    let run = agent.run(&vault, &["--service", "shop_worker", "--", "ls", "/run/secrets"]);
    assert_eq!(run.ok(), "api_key\n");

    // `config` shows the model without values.
    let config = compose(&vault, &dir, &["config"]).ok().to_string();
    assert!(config.contains("name: shop_db_password") && config.contains("environment: API_KEY"), "{config}");
    assert!(!config.contains("db-pass") && !config.contains("key-from-dotenv"), "{config}");

    // rm: services first, then the project's objects.
    let out = compose(&vault, &dir, &["rm", "shop"]).ok().to_string();
    assert_eq!(out.lines().next(), Some("Removing service shop_web"));
    assert_eq!(out.lines().count(), 6, "{out}");
    assert_eq!(state(&vault), "\n\n");
    let nothing = compose(&vault, &dir, &["rm", "shop"]);
    assert!(nothing.status.success() && nothing.stderr.contains("Nothing found in project: shop"), "{nothing:?}");
}

#[test]
fn compose_failing_deploys_leave_nothing_behind() {
    let vault = TestVault::start_new();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("app");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "a").unwrap();
    let write = |text: &str| std::fs::write(dir.join("compose.yaml"), text).unwrap();

    // A first, good deploy: the state every failure below must leave as it is.
    write("services:\n  web:\n    secrets: [a]\nsecrets:\n  a:\n    file: a.txt\n");
    compose(&vault, &dir, &["deploy"]).ok();
    let before = state(&vault);

    // An external secret that does not exist: refused before anything is created.
    write(
        "services:\n  web:\n    secrets: [a, b, ext]\n  new: {secrets: [b]}\nsecrets:\n  a: {file: a.txt}\n  b: {file: a.txt}\n  ext: {external: true, name: missing_ext}\n",
    );
    compose(&vault, &dir, &["deploy"]).fails_with(
        "compose.yaml: secrets.ext: external secret \"missing_ext\" not found: create it first (hush secret create missing_ext FILE)",
    );
    assert_eq!(state(&vault), before);

    // A name taken by an object outside the project: refused before anything is created.
    vault.hush_stdin(&["secret", "create", "app_b", "-"], b"not ours").ok();
    let before = state(&vault);
    write("services:\n  web:\n    secrets: [a, b]\nsecrets:\n  a: {file: a.txt}\n  b: {file: a.txt}\n");
    compose(&vault, &dir, &["deploy"])
        .fails_with("secrets.b: secret \"app_b\" already exists and is not part of project app");
    assert_eq!(state(&vault), before);
    vault.hush(&["secret", "rm", "app_b"]).ok();
    let before = state(&vault);

    // A failure midway (two keys naming the same object: the vault refuses the second create):
    // the objects and services created before it are removed again.
    write(
        "services:\n  web:\n    secrets: [a]\n  new: {secrets: [c]}\nsecrets:\n  a: {file: a.txt}\n  c: {file: a.txt, name: same}\n  d: {file: a.txt, name: same}\n",
    );
    compose(&vault, &dir, &["deploy"]).fails_with("compose.yaml: secrets.d: secret same already exists");
    assert_eq!(state(&vault), before);

    // Offline errors never reach the vault.
    write("services:\n  web:\n    secrets: [nope]\n");
    compose(&vault, &dir, &["deploy"])
        .fails_with("compose.yaml: services.web.secrets[0]: secret \"nope\" is not declared in the top-level secrets");
    assert_eq!(state(&vault), before);
}
