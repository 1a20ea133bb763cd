//! Which node gets which secrets, tried as an attacker would: a node the constraints exclude
//! asks for a task anyway, a node certificate tries to label itself, join tokens are reused past
//! their limit, after they expire or are rotated, and put on a command line. Real vault, real
//! agents, real TLS on loopback.

use hush_tests::{Run, TestAgent, TestVault, files_containing, marker, wait_for};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

fn audit(vault: &TestVault, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["audit", "--format", "json"];
    full.extend_from_slice(args);
    serde_json::from_str::<Value>(vault.hush(&full).ok()).unwrap().as_array().unwrap().clone()
}

fn node_ids(vault: &TestVault) -> Vec<String> {
    vault.hush(&["node", "ls", "-q"]).ok().lines().map(str::to_string).collect()
}

fn node_id_of(agent: &TestAgent) -> String {
    let info: Value = serde_json::from_slice(&std::fs::read(agent.state_dir().join("node.json")).unwrap()).unwrap();
    info["node_id"].as_str().unwrap().to_string()
}

fn inspect(vault: &TestVault, node: &str) -> Value {
    serde_json::from_str::<Value>(vault.hush(&["node", "inspect", node]).ok()).unwrap()[0].clone()
}

/// The node's own certificate as a `hush` TLS dir (what a compromised node holds).
fn node_tls_dir(agent: &TestAgent) -> PathBuf {
    let dir = agent.dir.path().join("as-node");
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to) in [("ca.pem", "ca.pem"), ("node.pem", "cert.pem"), ("node.key", "key.pem")] {
        std::fs::copy(agent.state_dir().join(from), dir.join(to)).unwrap();
    }
    dir
}

#[test]
fn the_vault_decides_which_nodes_run_a_service() {
    let vault = TestVault::start_new();
    let db_node = TestAgent::join(&vault);
    let web_node = TestAgent::join(&vault);
    let (db_id, web_id) = (node_id_of(&db_node), node_id_of(&web_node));
    let value = marker("placed");
    vault.hush_stdin(&["secret", "create", "db_pw", "-"], value.as_bytes()).ok();

    // Labels only admins set: a node's own certificate cannot label it.
    let mut as_node = vault.command();
    as_node.env("HUSH_TLS_DIR", node_tls_dir(&web_node)).args(["node", "update", "--label-add", "role=db", &web_id]);
    Run::from_command(&mut as_node).fails_with("needs an admin certificate");
    assert!(inspect(&vault, &web_id)["Labels"].as_object().unwrap().is_empty());
    let refusal =
        audit(&vault, &[]).into_iter().find(|e| e["op"] == "denied" && e["actor"] == format!("node:{web_id}"));
    assert!(refusal.is_some(), "the node's attempt was not audited");

    assert_eq!(
        vault.hush(&["node", "update", "--label-add", "role=db", "--label-add", "zone", &db_id]).ok(),
        format!("{db_id}\n")
    );
    vault.hush(&["node", "update", "--label-rm", "nope", &db_id]).fails_with("key nope doesn't exist in node's labels");
    let shown = inspect(&vault, &db_id);
    assert_eq!(shown["Labels"], serde_json::json!({"role": "db", "zone": ""}));
    let listed: Value = serde_json::from_str(vault.hush(&["node", "ls", "--format", "json"]).ok()).unwrap();
    let row = listed.as_array().unwrap().iter().find(|n| n["ID"] == db_id.as_str()).unwrap().clone();
    assert_eq!(row["Labels"]["role"], "db");
    let pretty = vault.hush(&["node", "inspect", "--pretty", &db_id]).ok().to_string();
    assert!(pretty.contains(" - role=db") && pretty.contains("Role:            worker"), "{pretty}");

    // A service pinned to the labelled node.
    vault.hush(&["service", "create", "db", "--secret", "db_pw", "--constraint", " node.labels.role == db "]).ok();
    let service: Value = serde_json::from_str(vault.hush(&["service", "inspect", "db"]).ok()).unwrap();
    assert_eq!(service[0]["Placement"]["Constraints"], serde_json::json!(["node.labels.role==db"]));
    vault.hush(&["service", "create", "x", "--constraint", "node.name==n1"]).fails_with("node.hostname");
    vault.hush(&["service", "create", "x", "--constraint", "node.labels.role>=db"]).fails_with("invalid constraint");

    // The excluded node asks anyway: refused in one line, audited, nothing delivered.
    let refused = web_node.run(&vault, &["--service", "db", "--", "cat", "/run/secrets/db_pw"]);
    let line = refused.fails_with("may not run service db: it does not satisfy the constraint node.labels.role==db");
    assert!(!line.contains(&value), "{line}");
    let denied = audit(&vault, &["--node", &web_id, "--service", "db"]);
    assert!(
        denied.iter().any(|e| e["op"] == "denied" && e["reason"].as_str().unwrap().contains("node.labels.role==db")),
        "{denied:?}"
    );

    // The labelled node runs it; the value's delivery is audited, once, to that node only.
    let ran = db_node.run(&vault, &["--service", "db", "--", "cat", "/run/secrets/db_pw"]);
    assert_eq!(ran.ok(), value);
    let deliveries = wait_for("the deliver entry", || {
        let d: Vec<Value> =
            audit(&vault, &["--secret", "db_pw"]).into_iter().filter(|e| e["op"] == "deliver").collect();
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!((deliveries[0]["node"].as_str(), deliveries[0]["version"].as_u64()), (Some(db_id.as_str()), Some(1)));
    assert_eq!(deliveries[0]["service"], "db");

    // A running task whose node stops qualifying loses its files at once, and its task ends.
    let mut session = db_node.session(&vault, "db", "cat /run/secrets/db_pw 2>/dev/null || printf gone");
    assert_eq!(session.ask(), value);
    vault.hush(&["node", "update", "--label-rm", "role", &db_id]).ok();
    wait_for("the files to leave the node", || (session.ask() == "gone").then_some(()));
    let ends = audit(&vault, &["--node", &db_id]);
    assert!(ends.iter().any(|e| e["op"] == "task_end" && e["reason"].is_string()), "{ends:?}");
    session.finish();

    // Constraints change with the service too: pin it to the other node by ID.
    vault
        .hush(&[
            "service",
            "update",
            "db",
            "--constraint-rm",
            "node.labels.role==db",
            "--constraint-add",
            &format!("node.id=={web_id}"),
        ])
        .ok();
    vault
        .hush(&["service", "update", "db", "--constraint-rm", "node.labels.role==web"])
        .fails_with("has no constraint");
    db_node.run(&vault, &["--service", "db", "--", "true"]).fails_with("may not run service db");
    assert_eq!(web_node.run(&vault, &["--service", "db", "--", "cat", "/run/secrets/db_pw"]).ok(), value);
    let receivers: std::collections::BTreeSet<String> = audit(&vault, &["--secret", "db_pw"])
        .into_iter()
        .filter(|e| e["op"] == "deliver")
        .map(|e| e["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(receivers, [db_id.clone(), web_id.clone()].into_iter().collect(), "every node that received it");

    // Compose's deploy.placement.constraints become the service's constraints.
    let project = vault.temp.path().join("shop");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("compose.yaml"),
        format!(
            "services:\n  api:\n    secrets: [pw]\n    deploy:\n      replicas: 2\n      placement:\n        constraints:\n          - node.id == {db_id}\nsecrets:\n  pw:\n    environment: PW\n"
        ),
    )
    .unwrap();
    let compose = project.join("compose.yaml");
    let mut deploy = vault.command();
    deploy.env("PW", "p").args(["compose", "deploy", "-f", compose.to_str().unwrap()]);
    Run::from_command(&mut deploy).ok();
    let api: Value = serde_json::from_str(vault.hush(&["service", "inspect", "shop_api"]).ok()).unwrap();
    assert_eq!(api[0]["Placement"]["Constraints"], serde_json::json!([format!("node.id=={db_id}")]));
    web_node.run(&vault, &["--service", "shop_api", "--", "true"]).fails_with("may not run service shop_api");
    assert_eq!(db_node.run(&vault, &["--service", "shop_api", "--", "cat", "/run/secrets/pw"]).ok(), "p");
}

#[test]
fn join_tokens_expire_run_out_rotate_and_never_go_on_a_command_line() {
    let vault = TestVault::start_new();
    let token = |args: &[&str]| {
        let mut full = vec!["node", "join-token", "-q"];
        full.extend_from_slice(args);
        vault.hush(&full).ok().trim().to_string()
    };

    // On the command line: refused before anything is sent, with the reason and the way.
    let once = token(&["--uses", "1", "--label", "rack=r1"]);
    let mut agent = TestAgent::new();
    let refused = agent.start(&["--vault", &vault.addr, "--join-token", &once]).unwrap_err();
    assert!(!refused.status.success());
    let lines: Vec<&str> = refused.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", refused.stderr);
    assert!(
        lines[0].starts_with("error: --join-token is refused") && lines[0].contains("/proc/PID/cmdline"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("--join-token-file") && lines[0].contains("HUSH_JOIN_TOKEN"), "{}", lines[0]);
    assert!(node_ids(&vault).is_empty());
    // A token file other users can read is refused too.
    let file = agent.token_file(&once);
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let loose = agent.start(&["--vault", &vault.addr, "--join-token-file", file.to_str().unwrap()]).unwrap_err();
    assert!(
        loose.stderr.contains("can be read by other users") && loose.stderr.contains("chmod 600"),
        "{}",
        loose.stderr
    );

    // One use: the first join takes it, with the token's labels; two more, racing, both fail.
    agent.start_joining(&vault, &once).unwrap_or_else(|e| panic!("join: {}", e.stderr));
    let node = node_id_of(&agent);
    assert_eq!(inspect(&vault, &node)["Labels"], serde_json::json!({"rack": "r1"}));
    let token_id = inspect(&vault, &node)["JoinToken"].as_str().unwrap().to_string();
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let (addr, once) = (vault.addr.clone(), once.clone());
            std::thread::spawn(move || {
                let mut agent = TestAgent::new();
                let file = agent.token_file(&once);
                agent.start(&["--vault", &addr, "--join-token-file", file.to_str().unwrap()]).map(|_| agent)
            })
        })
        .collect();
    for racer in racers {
        let err = racer.join().unwrap().err().expect("a used-up token admitted a node");
        let lines: Vec<&str> = err.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{:?}", err.stderr);
        assert!(lines[0].contains(&format!("token {token_id} has been used 1 time(s), its limit")), "{}", lines[0]);
    }
    assert_eq!(node_ids(&vault), vec![node.clone()]);

    // Several tokens at once; a short one expires.
    let short = token(&["--ttl", "1s"]);
    let long = token(&[]);
    // Waiting for the token's lifetime to pass (not for readiness).
    std::thread::sleep(Duration::from_millis(1100));
    let err = TestAgent::new().start_joining(&vault, &short).unwrap_err();
    assert!(err.stderr.contains("expired at"), "{}", err.stderr);
    // The environment works as the file does.
    let mut from_env = TestAgent::new();
    from_env.env.push(("HUSH_JOIN_TOKEN".into(), long.clone()));
    from_env.start(&["--vault", &vault.addr]).unwrap_or_else(|e| panic!("join from env: {}", e.stderr));

    // Rotation revokes every outstanding token; the new one works.
    let rotated = vault.hush(&["node", "join-token", "--rotate"]).ok().to_string();
    assert!(rotated.contains("--join-token-file") && rotated.contains("Revoked 1 earlier token(s)"), "{rotated}");
    let new = rotated.lines().map(str::trim).find(|l| l.starts_with("HUSHTKN-")).unwrap().to_string();
    let err = TestAgent::new().start_joining(&vault, &long).unwrap_err();
    assert!(err.stderr.contains("wrong or has been revoked"), "{}", err.stderr);
    TestAgent::new().start_joining(&vault, &new).unwrap_or_else(|e| panic!("join: {}", e.stderr));
    assert_eq!(node_ids(&vault).len(), 3);

    // Audited by ID: every token made, every join and refused join; no token anywhere on disk.
    let entries = audit(&vault, &[]);
    let ops = |op: &str| entries.iter().filter(|e| e["op"] == op).count();
    assert_eq!((ops("join_token"), ops("join_token_rotate"), ops("node_join")), (3, 1, 3));
    assert!(entries.iter().any(|e| e["op"] == "node_join" && e["token"] == token_id.as_str()));
    assert!(entries.iter().filter(|e| e["op"] == "denied" && e["token"] == token_id.as_str()).count() >= 2);
    for secret in [&once, &short, &long, &new] {
        let (_, secret) = secret.rsplit_once('-').unwrap();
        assert_eq!(files_containing(&vault.data_dir, secret.as_bytes()), Vec::<PathBuf>::new());
        assert!(!vault.log_text().contains(secret));
    }
}

#[test]
fn single_join_tokens_are_listed_and_revoked_by_id() {
    let vault = TestVault::start_new();
    let mint = |args: &[&str]| {
        let mut full = vec!["node", "join-token"];
        full.extend_from_slice(args);
        let out = vault.hush(&full).ok().to_string();
        let token = out.lines().map(str::trim).find(|l| l.starts_with("HUSHTKN-")).unwrap().to_string();
        let id = out.split("Token ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap().to_string();
        (token, id)
    };
    let (web_token, web_id) = mint(&["--uses", "3", "--label", "role=web", "--label", "zone=a"]);
    let (db_token, db_id) = mint(&["--ttl", "1h", "--label", "role=db"]);
    let (spare_token, spare_id) = mint(&[]);

    // Listed: ID, uses left, expiry, labels; never the token.
    let table = vault.hush(&["node", "join-token", "ls"]).ok().to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["ID", "USES", "LEFT", "EXPIRES", "LABELS"], "{table}");
    let row = |id: &str| lines.iter().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} not in {table}"));
    assert!(row(&web_id).contains(" 3 ") && row(&web_id).ends_with("role=web,zone=a"), "{table}");
    assert!(row(&db_id).contains("unlimited") && row(&db_id).contains("in 59 minutes"), "{table}");
    assert_eq!(lines.len(), 4, "{table}");
    let json: Value = serde_json::from_str(vault.hush(&["node", "join-token", "ls", "--format", "json"]).ok()).unwrap();
    let web = json.as_array().unwrap().iter().find(|t| t["ID"] == web_id.as_str()).unwrap();
    assert_eq!((web["UsesLeft"].as_u64(), web["MaxUses"].as_u64(), web["Uses"].as_u64()), (Some(3), Some(3), Some(0)));
    assert_eq!(web["Labels"], serde_json::json!({"role": "web", "zone": "a"}));
    assert_eq!(web["Expired"], false);
    assert!(
        web["ExpiresAt"].as_str().unwrap().ends_with('Z') && web["CreatedBy"].as_str().unwrap().starts_with("admin")
    );
    assert_eq!(json[0]["ID"], web_id.as_str(), "oldest first");
    let mut quiet: Vec<String> =
        vault.hush(&["node", "join-token", "ls", "-q"]).ok().lines().map(String::from).collect();
    quiet.sort();
    let mut ids = vec![web_id.clone(), db_id.clone(), spare_id.clone()];
    ids.sort();
    assert_eq!(quiet, ids);
    for token in [&web_token, &db_token, &spare_token] {
        let (_, secret) = token.rsplit_once('-').unwrap();
        assert!(!table.contains(secret) && !json.to_string().contains(secret), "a token's secret was listed");
    }

    // A join uses one of web's three.
    TestAgent::new().start_joining(&vault, &web_token).unwrap_or_else(|e| panic!("join: {}", e.stderr));
    let json: Value = serde_json::from_str(vault.hush(&["node", "join-token", "ls", "--format", "json"]).ok()).unwrap();
    let web = json.as_array().unwrap().iter().find(|t| t["ID"] == web_id.as_str()).unwrap();
    assert_eq!(web["UsesLeft"].as_u64(), Some(2));

    // Revoked one by one (ID or unique prefix); the others still admit nodes; a joined node stays.
    let nodes_before = node_ids(&vault);
    assert_eq!(vault.hush(&["node", "join-token", "rm", &web_id]).ok(), format!("{web_id}\n"));
    let err = TestAgent::new().start_joining(&vault, &web_token).unwrap_err();
    let lines: Vec<&str> = err.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", err.stderr);
    assert!(lines[0].starts_with("error: ") && lines[0].contains("wrong or has been revoked"), "{}", lines[0]);
    assert_eq!(node_ids(&vault), nodes_before, "revoking a token keeps its nodes");
    let prefix = &db_id[..8];
    assert_eq!(vault.hush(&["node", "join-token", "remove", prefix]).ok(), format!("{prefix}\n"));
    TestAgent::new().start_joining(&vault, &spare_token).unwrap_or_else(|e| panic!("join: {}", e.stderr));
    assert_eq!(vault.hush(&["node", "join-token", "ls", "-q"]).ok(), format!("{spare_id}\n"));

    // Unknown IDs: one error line each, exit 1, the known ones still removed.
    vault.hush(&["node", "join-token", "rm", "nosuchtoken"]).fails_with("join token nosuchtoken not found");
    let mixed = vault.hush(&["node", "join-token", "rm", &web_id, &spare_id]);
    assert!(!mixed.status.success());
    assert_eq!(mixed.stdout, format!("{spare_id}\n"));
    assert_eq!(mixed.stderr.lines().count(), 1, "{}", mixed.stderr);
    assert!(mixed.stderr.contains(&format!("join token {web_id} not found")), "{}", mixed.stderr);
    assert_eq!(vault.hush(&["node", "join-token", "ls", "-q"]).ok(), "");
    // Flags of a new token do not mix with ls/rm.
    assert!(!vault.hush(&["node", "join-token", "--uses", "2", "ls"]).status.success());

    // Audited with the token's ID, by the admin.
    let removed: Vec<Value> = audit(&vault, &[]).into_iter().filter(|e| e["op"] == "join_token_rm").collect();
    let removed_ids: Vec<&str> = removed.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert_eq!(removed_ids, [web_id.as_str(), db_id.as_str(), spare_id.as_str()]);
    assert!(removed.iter().all(|e| e["actor"].as_str().unwrap().starts_with("admin")));
}
