//! Audit end to end: every read attributed to its task, service, process and user; events
//! survive a vault outage; the hash chain catches any tampering with the log files.

use hush_tests::{TestAgent, TestVault, files_containing, marker, wait_for};
use serde_json::Value;
use std::path::PathBuf;

fn audit(vault: &TestVault, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "--format", "json"];
    args.extend_from_slice(filters);
    serde_json::from_str::<Value>(vault.hush(&args).ok()).unwrap().as_array().unwrap().clone()
}

fn wait_for_entries(vault: &TestVault, filters: &[&str], what: &str, found: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    wait_for(what, || {
        let entries = audit(vault, filters);
        found(&entries).then_some(entries)
    })
}

#[test]
fn reads_are_attributed_to_task_service_process_and_user() {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    let value = marker("audited");
    vault.hush_stdin(&["secret", "create", "db_password", "-"], value.as_bytes()).ok();
    vault.hush_stdin(&["secret", "create", "api_key", "-"], b"key-value").ok();
    vault.hush(&["service", "create", "web", "--secret", "db_password"]).ok();
    vault.hush(&["service", "create", "worker", "--secret", "api_key"]).ok();

    let web = agent.run(&vault, &["--service", "web", "--", "sh", "-c", "echo $$; exec cat /run/secrets/db_password"]);
    let web_pid: u32 = web.ok().lines().next().unwrap().parse().unwrap();
    let worker = agent.run(
        &vault,
        &[
            "--service",
            "worker",
            "--",
            "sh",
            "-c",
            "echo $$; exec setpriv --reuid 65534 --regid 65534 --clear-groups head -c 3 /run/secrets/api_key",
        ],
    );
    let worker_pid: u32 = worker.ok().lines().next().unwrap().parse().unwrap();

    let entries =
        wait_for_entries(&vault, &["--service", "web"], "web's reads", |e| e.iter().any(|x| x["op"] == "read"));
    let open = entries.iter().find(|e| e["op"] == "open").expect("open recorded");
    assert_eq!(open["secret"], "db_password");
    assert_eq!(open["version"], 1);
    // Tasks run in their own PID namespace: the task's `$$` is its pid there, the filesystem
    // records the host's pid (the one `ps` and `kill` on the host name).
    assert_ne!(web_pid, 0);
    let web_host_pid = open["pid"].as_u64().expect("pid recorded");
    assert!(web_host_pid > 0 && web_host_pid != u64::from(web_pid), "{open}");
    assert_eq!(open["uid"], 0);
    assert_eq!(open["command"], "cat");
    assert_eq!(open["path"], "/run/secrets/db_password");
    assert!(open["task"].as_str().is_some_and(|t| t.len() == 25));
    assert!(open["node"].is_string());
    let read = entries.iter().find(|e| e["op"] == "read").unwrap();
    assert_eq!(read["bytes"], value.len() as u64);

    let entries =
        wait_for_entries(&vault, &["--secret", "api_key"], "worker's reads", |e| e.iter().any(|x| x["op"] == "read"));
    let open = entries.iter().find(|e| e["op"] == "open").unwrap();
    assert_eq!((open["service"].as_str(), open["uid"].as_u64()), (Some("worker"), Some(65534)));
    assert!(open["pid"].as_u64().is_some_and(|pid| pid > 0 && pid != u64::from(worker_pid)), "{open}");
    assert_eq!(open["command"], "head");
    assert_ne!(open["task"], audit(&vault, &["--service", "web"])[0]["task"]);

    // API actions are there too, with their actor, and the table reads.
    let all = audit(&vault, &[]);
    assert!(all.iter().any(|e| e["op"] == "create" && e["actor"] == "admin:admin" && e["secret"] == "db_password"));
    assert!(all.iter().any(|e| e["op"] == "service_create" && e["service"] == "worker"));
    assert!(all.iter().any(|e| e["op"] == "node_join"));
    let table = vault.hush(&["audit", "--secret", "db_password"]);
    assert!(table.ok().lines().next().unwrap().starts_with("TIME"));
    assert!(table.stdout.contains("secret/db_password"));
    // Never a value, anywhere under the data dir.
    assert!(files_containing(&vault.data_dir, value.as_bytes()).is_empty());
    assert!(vault.hush(&["audit", "verify"]).ok().contains("hash chain verified"));
}

/// One read of `/run/secrets/s` ("value"), then `reads` more while the vault is down; the vault
/// comes back on its address.
fn read_during_an_outage(vault: &mut TestVault, task: &mut hush_tests::TaskSession, reads: usize) {
    assert_eq!(task.ask(), "value");
    let addr = vault.addr.clone();
    vault.kill9();
    for _ in 0..reads {
        assert_eq!(task.ask(), "value");
    }
    vault.start_on(&addr);
}

#[test]
fn reads_during_a_vault_outage_arrive_after_it_returns() {
    let mut vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    vault.hush_stdin(&["secret", "create", "s", "-"], b"value").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let mut task = agent.session(&vault, "web", "cat /run/secrets/s");
    read_during_an_outage(&mut vault, &mut task, 5);
    // 1 read before the outage + 5 during it, each an open of its own `cat`.
    wait_for_entries(&vault, &["--secret", "s"], "reads made while the vault was down", |e| {
        e.iter().filter(|x| x["op"] == "open").count() >= 6
    });
    task.finish();
}

/// A vault with a few log entries spread over several small files, stopped.
fn stopped_vault_with_entries() -> TestVault {
    let mut vault = TestVault::init(&[]);
    vault.env.push(("HUSH_AUDIT_FILE_BYTES".into(), "600".into()));
    vault.start();
    for i in 0..8 {
        vault.hush_stdin(&["secret", "create", &format!("s{i}"), "-"], b"v").ok();
    }
    assert!(vault.hush(&["audit", "verify"]).ok().contains("audit log intact: 8 entries"));
    vault.stop();
    vault
}

fn log_files(vault: &TestVault) -> Vec<PathBuf> {
    let mut files: Vec<_> =
        std::fs::read_dir(vault.data_dir.join("audit")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// Applies `tamper` to the lines of all files (as one list), writes them back file by file.
fn tamper_lines(vault: &TestVault, tamper: impl FnOnce(&mut Vec<String>)) {
    let files = log_files(vault);
    assert!(files.len() >= 2, "the log should span several files: {files:?}");
    let mut per_file: Vec<usize> = Vec::new();
    let mut lines = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        per_file.push(text.lines().count());
        lines.extend(text.lines().map(str::to_string));
    }
    let before = lines.clone();
    tamper(&mut lines);
    assert_ne!(before, lines, "the tampering changed nothing");
    let mut rest = lines.into_iter();
    for (i, (file, count)) in files.iter().zip(&per_file).enumerate() {
        let take = if i + 1 == files.len() { usize::MAX } else { *count };
        let chunk: Vec<String> = rest.by_ref().take(take).collect();
        let text = if chunk.is_empty() { String::new() } else { chunk.join("\n") + "\n" };
        std::fs::write(file, text).unwrap();
    }
}

fn verify_fails(mut vault: TestVault, needle: &str) {
    vault.start();
    let line = vault.hush(&["audit", "verify"]).fails_with("audit log tampered");
    // `entry N (FILE line L): problem`: the file is whichever holds it.
    let (entry, problem) = needle.split_once(" (FILE): ").unwrap_or((needle, ""));
    assert!(line.contains(entry) && line.contains(problem), "{line}");
}

#[test]
fn verify_detects_edit_delete_insert_reorder_and_truncation() {
    let vault = stopped_vault_with_entries();
    tamper_lines(&vault, |lines| lines[3] = lines[3].replace("\"s3\"", "\"sX\""));
    verify_fails(vault, "entry 4 (FILE): its MAC does not verify");

    let vault = stopped_vault_with_entries();
    tamper_lines(&vault, |lines| {
        lines.remove(4);
    });
    verify_fails(vault, "entry 5");

    let vault = stopped_vault_with_entries();
    tamper_lines(&vault, |lines| {
        let copy = lines[2].clone();
        lines.insert(3, copy);
    });
    verify_fails(vault, "entry 4");

    let vault = stopped_vault_with_entries();
    tamper_lines(&vault, |lines| lines.swap(5, 6));
    verify_fails(vault, "entry 6");

    let vault = stopped_vault_with_entries();
    tamper_lines(&vault, |lines| {
        lines.pop();
    });
    verify_fails(vault, "removed from the end");

    let vault = stopped_vault_with_entries();
    tamper_lines(&vault, |lines| {
        let last = lines.len() - 1;
        lines[last] = lines[last].replace("\"s7\"", "\"sY\"");
    });
    verify_fails(vault, "entry 8 (FILE): its MAC does not verify");
}

/// The attack that worked on the unkeyed chain: edit an entry, recompute every SHA-256 link
/// after it and the head in the store, offline. Now the vault refuses the log (an unkeyed log
/// is an earlier Hush's, and there is no way to make keyed lines without the key).
#[test]
fn an_offline_forgery_of_the_chain_is_refused() {
    use hush_vault::store::{Store, Txn};
    let vault = stopped_vault_with_entries();
    let sha256 = |line: &str| hush_vault::crypto::sha256_hex(line.as_bytes());
    let mut forged_head = String::new();
    tamper_lines(&vault, |lines| {
        let mut prev = "0".repeat(64);
        for (i, line) in lines.iter_mut().enumerate() {
            let mut entry: Value = serde_json::from_str(line).unwrap();
            let entry = entry.as_object_mut().unwrap();
            entry.remove("mac");
            entry.insert("prev".into(), Value::String(prev.clone()));
            if i == 3 {
                entry.insert("secret".into(), Value::String("forged".into()));
            }
            *line = serde_json::to_string(entry).unwrap();
            prev = sha256(line);
        }
        forged_head = format!(r#"{{"seq":{},"hash":"{prev}"}}"#, lines.len());
    });
    let store_path = hush_vault::layout::DataDir::new(&vault.data_dir).store();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = hush_vault::store::redb::RedbStore::open(&store_path).unwrap();
        store.commit(Txn::new().put(hush_vault::audit::HEAD_KEY, forged_head.into_bytes())).await.unwrap();
    });
    let serve = hush_tests::Run::from_command(
        std::process::Command::new(hush_tests::bin("hush"))
            .args(["vault", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&vault.data_dir),
    );
    serve.fails_with("written by an earlier Hush, whose hash chain is not keyed");

    // With keyed lines, a recomputed chain cannot carry valid MACs.
    let vault = stopped_vault_with_entries();
    tamper_lines(&vault, |lines| {
        let mut prev = String::new();
        for (i, line) in lines.iter_mut().enumerate() {
            let mut entry: Value = serde_json::from_str(line).unwrap();
            let entry = entry.as_object_mut().unwrap();
            if i < 3 {
                prev = entry["mac"].as_str().unwrap().to_string();
                continue;
            }
            entry.insert("prev".into(), Value::String(prev.clone()));
            if i == 3 {
                entry.insert("secret".into(), Value::String("forged".into()));
            }
            entry.remove("mac");
            let body = serde_json::to_string(entry).unwrap();
            entry.insert("mac".into(), Value::String(sha256(&body)));
            prev = sha256(&body);
            *line = serde_json::to_string(entry).unwrap();
        }
    });
    verify_fails(vault, "entry 4 (FILE): its MAC does not verify");
}

/// Lines appended after the recorded head, shaped like the vault's own, fail on a running vault
/// (no restart needed) and after a restart.
#[test]
fn padding_after_the_recorded_head_fails_verify() {
    let mut vault = TestVault::start_new();
    vault.hush_stdin(&["secret", "create", "s", "-"], b"v").ok();
    let file = log_files(&vault).pop().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let seq = last["seq"].as_u64().unwrap();
    let padding = serde_json::json!({
        "seq": seq + 1, "time": last["time"], "op": "rm", "actor": "admin:admin", "secret": "s",
        "prev": last["mac"], "mac": "ab".repeat(32),
    });
    std::fs::write(&file, format!("{text}{padding}\n")).unwrap();
    let needle = format!("entry {} (", seq + 1);
    let line = vault.hush(&["audit", "verify"]).fails_with("its MAC does not verify");
    assert!(line.contains(&needle), "{line}");
    vault.stop();
    vault.start();
    let line = vault.hush(&["audit", "verify"]).fails_with("its MAC does not verify");
    assert!(line.contains(&needle), "{line}");
}

#[test]
fn overflow_is_counted_never_silent_and_events_can_go_to_a_local_log() {
    let mut vault = TestVault::start_new();
    let mut agent = TestAgent::join(&vault);
    let _ = agent.stop();
    let local = agent.dir.path().join("events.jsonl");
    // A tiny queue so that an outage overflows it.
    start_with_small_queue(&mut agent, &["--audit-log", local.to_str().unwrap()]);
    vault.hush_stdin(&["secret", "create", "s", "-"], b"value").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let mut task = agent.session(&vault, "web", "cat /run/secrets/s");
    read_during_an_outage(&mut vault, &mut task, 20);
    // Every access counted once: in an entry (folded ones by their count) or as dropped.
    let total = |e: &[Value], ops: &[&str]| -> u64 {
        e.iter().filter(|x| ops.iter().any(|op| x["op"] == *op)).map(|x| x["count"].as_u64().unwrap_or(1)).sum()
    };
    // 21 cats, each an open (reads after the first come from the page cache, so 1 read).
    let entries = wait_for_entries(&vault, &[], "every access delivered or counted", |e| {
        e.iter().any(|x| x["op"] == "dropped") && total(e, &["open", "read", "dropped"]) >= 22
    });
    assert_eq!(total(&entries, &["open", "read", "dropped"]), 22, "{entries:?}");
    // The local log has every event, lost upstream or not.
    let local_lines = std::fs::read_to_string(&local).unwrap();
    let opens =
        local_lines.lines().filter(|l| l.contains("\"op\":\"open\"") && l.contains("\"command\":\"cat\"")).count();
    assert_eq!(opens, 21, "{local_lines}");
    assert!(!local_lines.contains("value\""), "a value in the local event log");
    task.finish();
}

/// Restarts the agent with a 5-event audit queue (through its environment, not ours).
fn start_with_small_queue(agent: &mut TestAgent, extra: &[&str]) {
    agent.env.push(("HUSH_AUDIT_QUEUE".into(), "5".into()));
    agent.start(extra).unwrap_or_else(|e| panic!("agent restart: {}", e.stderr));
}

#[test]
fn refusals_are_audited_as_denied() {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    // A node's own certificate used against the admin API.
    let bundle = agent.dir.path().join("node-bundle");
    std::fs::create_dir(&bundle).unwrap();
    for (from, to) in [("ca.pem", "ca.pem"), ("node.pem", "cert.pem"), ("node.key", "key.pem")] {
        std::fs::copy(agent.state_dir().join(from), bundle.join(to)).unwrap();
    }
    let run = hush_tests::Run::from_command(vault.command().env("HUSH_TLS_DIR", &bundle).args(["secret", "ls"]));
    run.fails_with("this operation needs an admin certificate");
    // A wrong unlock attempt on an unlocked vault is refused too (and says why).
    vault.hush_stdin(&["vault", "unlock"], b"HUSHKEY-1-guess\n").fails_with("already unlocked");
    let denied: Vec<Value> = audit(&vault, &[]).into_iter().filter(|e| e["op"] == "denied").collect();
    assert!(
        denied.iter().any(|e| e["actor"].as_str().is_some_and(|a| a.starts_with("node:"))
            && e["reason"].as_str().is_some_and(|r| r.contains("admin certificate"))),
        "{denied:?}"
    );
    assert!(denied.iter().any(|e| e["reason"].as_str().is_some_and(|r| r.starts_with("unlock:"))), "{denied:?}");
}

#[test]
fn follow_streams_json_lines_and_time_filters_apply() {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    vault.hush_stdin(&["secret", "create", "s", "-"], b"value").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let mut follow = vault
        .command()
        .args(["audit", "--follow", "--format", "json", "--secret", "s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The stored entry first, then what happens after.
    let first: Value = serde_json::from_str(&rx.recv_timeout(hush_tests::DEADLINE).unwrap()).unwrap();
    assert_eq!(first["op"], "create");
    agent.run(&vault, &["--service", "web", "--", "cat", "/run/secrets/s"]).ok();
    let open = loop {
        let entry: Value =
            serde_json::from_str(&rx.recv_timeout(hush_tests::DEADLINE).expect("followed entry")).unwrap();
        if entry["op"] == "open" {
            break entry;
        }
    };
    assert_eq!(open["command"], "cat");
    let _ = follow.kill();
    let _ = follow.wait();

    assert!(!audit(&vault, &["--since", "1h"]).is_empty());
    assert!(audit(&vault, &["--until", "1h"]).is_empty());
    vault.hush(&["audit", "--since", "yesterday-ish"]).fails_with("invalid time \"yesterday-ish\"");
}

#[test]
fn repeated_accesses_fold_into_counted_entries() {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    vault.hush_stdin(&["secret", "create", "s", "-"], b"value").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    // One process (the shell: `read < file` is a builtin) opens the secret 2,000 times.
    let step = "i=0; while [ $i -lt 2000 ]; do read -r v < /run/secrets/s; i=$((i+1)); done; printf '%s %s' $$ \"$v\"";
    let mut task = agent.session(&vault, "web", step);
    let said = task.ask();
    let (shell, v) = said.split_once(' ').unwrap();
    assert_eq!(v, "value");
    assert_eq!(shell, "2", "the task's shell is the first process after hush-init in its PID namespace");
    // Host root opening the task's file in a loop: refused every time.
    let task_dir = agent.task_dirs().into_iter().next().expect("task dir");
    let file = task_dir.join("root/run/secrets/s");
    for _ in 0..500 {
        assert_eq!(std::fs::File::open(&file).unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
    }
    // The task runs in its own PID namespace, so `$$` is not the pid the filesystem records:
    // the task's opens are found by service (this task is its only process), host root's by pid.
    let sum = |e: &[Value], op: &str, who: &dyn Fn(&Value) -> bool| -> (u64, usize) {
        let mine: Vec<&Value> = e.iter().filter(|x| x["op"] == op && who(x)).collect();
        (mine.iter().map(|x| x["count"].as_u64().unwrap_or(1)).sum(), mine.len())
    };
    let me = u64::from(std::process::id());
    let in_task = |x: &Value| x["service"] == "web" && x["command"] == "sh";
    let by_me = |x: &Value| x["pid"] == me;
    let entries = wait_for_entries(&vault, &[], "the folded opens and denials", |e| {
        sum(e, "open", &in_task).0 >= 2000 && sum(e, "denied", &by_me).0 >= 500
    });
    // Exact counts, in a handful of entries (one per second of looping at most).
    let (opens, open_entries) = sum(&entries, "open", &in_task);
    let (denials, denied_entries) = sum(&entries, "denied", &by_me);
    assert_eq!((opens, denials), (2000, 500));
    let pids: std::collections::HashSet<&Value> =
        entries.iter().filter(|x| x["op"] == "open" && in_task(x)).map(|x| &x["pid"]).collect();
    assert_eq!(pids.len(), 1, "one process opened the file: {pids:?}");
    assert!(open_entries <= 10 && denied_entries <= 10, "{open_entries} open and {denied_entries} denied entries");
    let folded = entries.iter().find(|x| x["op"] == "open" && in_task(x) && x["count"].as_u64() > Some(1));
    let folded = folded.expect("a folded entry");
    // The agent's times of the first and last open, within the task's life and before the
    // vault recorded the entry (RFC 3339 UTC strings of one format compare as times).
    let text = |key: &str| folded[key].as_str().unwrap_or_else(|| panic!("no {key}: {folded}")).to_string();
    let (first, last, recorded) = (text("first_time"), text("last_time"), text("time"));
    assert!(first < last && last <= recorded, "{folded}");
    let started = entries.iter().find(|x| x["op"] == "task_start" && x["service"] == "web").expect("task_start");
    assert!(started["time"].as_str().unwrap() <= first.as_str(), "{started} {folded}");
    // The table shows the count and both times of day.
    let table = vault.hush(&["audit", "--service", "web"]).ok().to_string();
    let times = format!("{} - {}", &first[11..23], &last[11..23]);
    let row = table.lines().find(|l| l.contains(&times)).unwrap_or_else(|| panic!("{times:?} not in\n{table}"));
    let count = folded["count"].as_u64().expect("a folded entry has a count");
    assert!(row.split_whitespace().any(|cell| cell.parse::<u64>().ok() == Some(count)), "{row}");
    assert!(table.starts_with("TIME") && table.lines().next().unwrap().contains("FIRST - LAST"), "{table}");
    task.finish();
}

#[test]
fn folding_never_merges_processes_files_or_versions() {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    vault.hush_stdin(&["secret", "create", "a", "-"], b"a1").ok();
    vault.hush_stdin(&["secret", "create", "b", "-"], b"b1").ok();
    vault.hush(&["service", "create", "fold", "--secret", "a", "--secret", "b"]).ok();
    // Each step: the shell opens a and b 300 times each (builtins), then a `cat` (a process of
    // its own) opens a once.
    const LOOP: u64 = 300;
    let step = format!(
        "i=0; while [ $i -lt {LOOP} ]; do read -r v < /run/secrets/a; read -r w < /run/secrets/b; i=$((i+1)); done; \
         printf '%s ' \"$v\"; cat /run/secrets/a"
    );
    let mut task = agent.session(&vault, "fold", &step);
    assert_eq!(task.ask(), "a1 a1");
    vault.hush_stdin(&["secret", "rotate", "a", "-"], b"a2").ok();
    let mut steps = 1;
    wait_for("the rotation seen in the task", || {
        steps += 1;
        (task.ask() == "a2 a2").then_some(())
    });
    let opens = |e: &[Value], secret: &str, command: &str| -> Vec<Value> {
        e.iter().filter(|x| x["op"] == "open" && x["secret"] == secret && x["command"] == command).cloned().collect()
    };
    let count = |v: &[Value]| -> u64 { v.iter().map(|x| x["count"].as_u64().unwrap_or(1)).sum() };
    let entries = wait_for_entries(&vault, &["--service", "fold"], "every open of every step", |e| {
        count(&opens(e, "a", "sh")) == steps * LOOP
            && count(&opens(e, "b", "sh")) == steps * LOOP
            && count(&opens(e, "a", "cat")) == steps
    });
    // Exact counts, and nothing more than asked for.
    let (sh_a, sh_b, cat_a) = (opens(&entries, "a", "sh"), opens(&entries, "b", "sh"), opens(&entries, "a", "cat"));
    assert_eq!((count(&sh_a), count(&sh_b), count(&cat_a)), (steps * LOOP, steps * LOOP, steps));
    // Every `cat` is its own process: one entry each, never folded into another's.
    let cat_pids: std::collections::HashSet<&Value> = cat_a.iter().map(|x| &x["pid"]).collect();
    assert_eq!((cat_a.len() as u64, cat_pids.len() as u64), (steps, steps), "{cat_a:?}");
    // Versions are kept apart: the shell's opens of a are at version 1 (the whole first step) and
    // at version 2 (at least the last step's last open: the rotation may land mid-step), in
    // entries of one version each; b stays at version 1.
    let at =
        |v: &[Value], version: u64| count(&v.iter().filter(|x| x["version"] == version).cloned().collect::<Vec<_>>());
    assert!(at(&sh_a, 1) >= LOOP && at(&sh_a, 2) >= 1, "{sh_a:?}");
    assert_eq!(at(&sh_a, 1) + at(&sh_a, 2), steps * LOOP);
    assert_eq!(at(&sh_b, 1), steps * LOOP);
    // Files are kept apart: no entry names both, and the shell's entries are one process's.
    assert!(sh_a.iter().chain(&sh_b).all(|x| x["pid"] == sh_a[0]["pid"]), "{sh_a:?} {sh_b:?}");
    assert!(sh_a.iter().all(|x| x["path"] == "/run/secrets/a") && sh_b.iter().all(|x| x["path"] == "/run/secrets/b"));
    assert!(task.finish().success());
}

#[test]
fn with_open_audit_off_the_vault_records_it_and_refusals_are_still_audited() {
    let vault = TestVault::start_new();
    let agent = TestAgent::join_with(&vault, &["--no-open-audit"]);
    vault.hush_stdin(&["secret", "create", "s", "-"], b"value").ok();
    vault.hush(&["service", "create", "quiet", "--secret", "s"]).ok();
    let mut task = agent.session(&vault, "quiet", "cat /run/secrets/s");
    assert_eq!(task.ask(), "value");
    // Host root is refused, and that is recorded.
    let file = agent.task_dirs().into_iter().next().expect("task dir").join("root/run/secrets/s");
    assert_eq!(std::fs::File::open(&file).unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
    let me = u64::from(std::process::id());
    let entries =
        wait_for_entries(&vault, &[], "the refusal", |e| e.iter().any(|x| x["op"] == "denied" && x["pid"] == me));
    assert!(task.finish().success());
    // The vault was told, by the node itself, when its stream opened.
    let off: Vec<&Value> = entries.iter().filter(|x| x["op"] == "open_audit_off").collect();
    assert_eq!(off.len(), 1, "{entries:?}");
    let node = off[0]["node"].as_str().expect("node");
    assert_eq!(off[0]["actor"], format!("node:{node}"));
    assert!(off[0]["reason"].as_str().unwrap().contains("--no-open-audit"), "{off:?}");
    // No open or read of the task's file was recorded.
    assert!(!entries.iter().any(|x| x["op"] == "open" || x["op"] == "read"), "{entries:?}");
}

/// A node's certificate, as a `TlsBundle` directory (`ca.pem`, `cert.pem`, `key.pem`).
fn node_bundle(agent: &TestAgent) -> hush_vault::client::TlsBundle {
    let bundle = agent.dir.path().join("node-bundle-for-reports");
    std::fs::create_dir_all(&bundle).unwrap();
    for (from, to) in [("ca.pem", "ca.pem"), ("node.pem", "cert.pem"), ("node.key", "key.pem")] {
        std::fs::copy(agent.state_dir().join(from), bundle.join(to)).unwrap();
    }
    hush_vault::client::TlsBundle::read(&bundle).unwrap()
}

/// A node reporting for itself with its own certificate may not write what the vault would not:
/// other ops, other nodes' or unknown tasks, its own time or service, huge fields, huge batches.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_can_only_report_accesses_to_its_own_tasks_as_the_vault_states_them() {
    use hush_proto::v1 as pb;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    vault.hush_stdin(&["secret", "create", "s", "-"], b"value").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    vault.hush(&["service", "create", "other", "--secret", "s"]).ok();
    let channel = hush_vault::client::connect_channel(&vault.addr, &node_bundle(&agent)).await.unwrap();
    let mut node = hush_proto::v1::node_client::NodeClient::new(channel);
    let task = node
        .start_task(pb::StartTaskRequest { service: "web".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let event = |op: &str, task_id: &str| pb::AccessEvent {
        time: "2001-01-01T00:00:00Z".into(),
        op: op.into(),
        task_id: task_id.into(),
        service: "other".into(),
        kind: pb::Kind::Secret as i32,
        name: "s".into(),
        version: 1,
        pid: 4242,
        command: format!("forged{}", "c".repeat(10_000)),
        ..Default::default()
    };
    let report = vec![
        event("open", &task),
        event("create", &task),
        event("read", "0123456789abcdefghijklmno"),
        event("open", "not-a-task"),
    ];
    node.report_access(pb::AccessReport { events: report }).await.unwrap();
    let too_many = vec![pb::AccessEvent { command: "cat".into(), ..event("read", &task) }; 2001];
    let refused = node.report_access(pb::AccessReport { events: too_many }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    let entries = wait_for_entries(&vault, &[], "the report's entries", |e| e.iter().any(|x| x["pid"] == 4242));
    let by_node: Vec<&Value> =
        entries.iter().filter(|e| e["actor"].as_str().is_some_and(|a| a.starts_with("node:"))).collect();
    let accepted: Vec<&&Value> = by_node.iter().filter(|e| e["pid"] == 4242).collect();
    assert_eq!(accepted.len(), 1, "{by_node:?}");
    let open = accepted[0];
    assert_eq!((open["op"].as_str(), open["task"].as_str()), (Some("open"), Some(task.as_str())));
    assert_eq!(open["service"], "web", "the service is the task's, not the node's claim");
    assert!(!open["time"].as_str().unwrap().starts_with("2001"), "the time is the vault's");
    assert!(open["command"].as_str().unwrap().len() < 200, "the command is capped");
    assert!(!by_node.iter().any(|e| e["op"] == "create"), "a node wrote an admin's op");
    let denied = by_node.iter().find(|e| e["op"] == "denied").expect("refused events counted");
    assert_eq!(denied["count"], 3);
    assert!(denied["reason"].as_str().unwrap().contains("\"create\" is not one a node may report"), "{denied}");
    assert!(vault.hush(&["audit", "verify"]).ok().contains("verified"));
}

/// A task runs a binary under a hostile name (its `/proc/PID/comm` ends a row and starts a fake
/// one with terminal escapes): the table shows it escaped, one row per entry.
#[test]
fn a_hostile_command_name_cannot_forge_table_rows() {
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    vault.hush_stdin(&["secret", "create", "s", "-"], b"value").ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    // 15 bytes, the most comm keeps: a newline, a fake time, an escape that clears the line.
    let hostile = "x\n2026\u{1b}[2Kroot";
    assert!(hostile.len() <= 15);
    let bin = agent.dir.path().join(hostile);
    std::os::unix::fs::symlink(std::fs::canonicalize("/bin/cat").unwrap(), &bin).unwrap();
    let script = "exec \"$0\" /run/secrets/s";
    agent.run(&vault, &["--service", "web", "--", "sh", "-c", script, bin.to_str().unwrap()]).ok();
    let entries = wait_for_entries(&vault, &["--secret", "s"], "the hostile read", |e| {
        e.iter().any(|x| x["op"] == "read" && x["command"] == hostile)
    });
    let table = vault.hush(&["audit", "--secret", "s"]);
    let out = table.ok();
    assert!(!out.contains('\u{1b}'), "an escape sequence reached the terminal: {out:?}");
    assert_eq!(out.lines().count(), entries.len() + 1, "{out}");
    assert!(out.contains("x\\n2026\\u{1b}[2Kroot"), "{out}");
}
