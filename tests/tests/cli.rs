//! The `hush secret` / `hush config` CLI against a real vault on loopback: the walkthrough,
//! output formats, and every kind of bad input (one `error:` line, non-zero exit, nothing changed).

use hush_tests::{Run, TestVault};
use serde_json::Value;

fn json(run: &Run) -> Value {
    serde_json::from_str(run.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout))
}

#[test]
fn secret_walkthrough() {
    let vault = TestVault::start_new();
    let id = vault.hush_stdin(&["secret", "create", "db_password", "-"], b"s3cr3t").ok().trim().to_string();
    assert_eq!(id.len(), 25, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));

    let key_file = vault.temp.path().join("key.pem");
    std::fs::write(&key_file, "-----BEGIN KEY-----\nabc\n").unwrap();
    vault.hush(&["secret", "create", "--label", "env=prod", "tls_key", key_file.to_str().unwrap()]).ok();

    // Aligned table, rows by name.
    let table = vault.hush(&["secret", "ls"]);
    let lines: Vec<&str> = table.ok().lines().collect();
    assert_eq!(lines.len(), 3, "{table:?}");
    for column in ["ID", "NAME", "VERSION", "CREATED", "UPDATED"] {
        assert!(lines[0].contains(column));
    }
    assert!(lines[1].contains("db_password") && lines[2].contains("tls_key"));
    let name_col = lines[0].find("NAME").unwrap();
    assert_eq!(lines[1].find("db_password"), Some(name_col), "columns align");
    assert_eq!(lines[2].find("tls_key"), Some(name_col), "columns align");
    assert!(lines[1].contains("ago"));

    let quiet = vault.hush(&["secret", "ls", "-q"]);
    assert_eq!(quiet.ok().lines().count(), 2);
    assert!(quiet.stdout.contains(&id));

    let listed = json(&vault.hush(&["secret", "ls", "--format", "json"]));
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|o| o["Name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db_password", "tls_key"]);
    assert_eq!(listed[1]["Labels"]["env"], "prod");

    let filtered = json(&vault.hush(&["secret", "ls", "--filter", "label=env=prod", "--format", "json"]));
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    let filtered = json(&vault.hush(&["secret", "ls", "--filter", "name=db", "--format", "json"]));
    assert_eq!(filtered[0]["Name"], "db_password");

    // Inspect: metadata only, never the value.
    let inspected = vault.hush(&["secret", "inspect", "db_password"]);
    assert!(!inspected.ok().contains("s3cr3t"));
    let inspected = json(&inspected);
    assert_eq!(inspected[0]["ID"], id.as_str());
    assert_eq!(inspected[0]["Spec"]["Name"], "db_password");
    assert_eq!(inspected[0]["Version"]["Index"], 1);
    let pretty = vault.hush(&["secret", "inspect", "--pretty", &id[..6]]);
    assert!(pretty.ok().contains("Name:            db_password"));
    assert!(!pretty.stdout.contains("s3cr3t"));

    // Rotate adds a version.
    vault.hush_stdin(&["secret", "rotate", "db_password", "-"], b"n3w").ok();
    let inspected = json(&vault.hush(&["secret", "inspect", "db_password"]));
    assert_eq!(inspected[0]["Version"]["Index"], 2);
    assert_eq!(inspected[0]["Versions"].as_array().unwrap().len(), 2);

    // rm by name and by ID.
    assert_eq!(vault.hush(&["secret", "rm", "tls_key", &id]).ok(), format!("tls_key\n{id}\n"));
    assert_eq!(vault.hush(&["secret", "ls", "-q"]).ok(), "");
}

#[test]
fn config_inspect_shows_data() {
    let vault = TestVault::start_new();
    vault.hush_stdin(&["config", "create", "nginx_conf", "-"], b"worker_processes 2;\n").ok();
    let inspected = json(&vault.hush(&["config", "inspect", "nginx_conf"]));
    assert_eq!(inspected[0]["Spec"]["Data"], "d29ya2VyX3Byb2Nlc3NlcyAyOwo=");
    let pretty = vault.hush(&["config", "inspect", "--pretty", "nginx_conf"]);
    assert!(pretty.ok().contains("worker_processes 2;"));
    // Secrets and configs are separate namespaces.
    assert!(vault.hush(&["secret", "ls", "-q"]).ok().is_empty());
}

/// Every listing, to show that a failed command changed nothing.
fn state(vault: &TestVault) -> String {
    let secrets = vault.hush(&["secret", "ls", "--format", "json"]).ok().to_string();
    let configs = vault.hush(&["config", "ls", "--format", "json"]).ok().to_string();
    secrets + &configs
}

#[test]
fn bad_input_is_refused_with_one_line_and_nothing_changes() {
    let vault = TestVault::start_new();
    vault.hush_stdin(&["secret", "create", "existing", "-"], b"keep-me").ok();
    vault.hush_stdin(&["config", "create", "existing", "-"], b"keep-me").ok();
    let before = state(&vault);

    vault.hush_stdin(&["secret", "create", "bad name", "-"], b"x").fails_with(r#"invalid name "bad name""#);
    vault.hush_stdin(&["secret", "create", "--", "-leading", "-"], b"x").fails_with("invalid name");
    vault.hush_stdin(&["secret", "create", &"n".repeat(65), "-"], b"x").fails_with("invalid name");
    vault.hush_stdin(&["secret", "create", "empty", "-"], b"").fails_with("secret data is empty");
    vault.hush_stdin(&["config", "create", "empty", "-"], b"").fails_with("config data is empty");
    vault.hush_stdin(&["secret", "create", "big", "-"], &vec![b'x'; 512_000]).fails_with("secret data is too large");
    vault.hush_stdin(&["config", "create", "big", "-"], &vec![b'x'; 1_024_000]).fails_with("config data is too large");
    vault.hush_stdin(&["secret", "create", "existing", "-"], b"other").fails_with("secret existing already exists");
    vault.hush(&["secret", "create", "nofile", "/nonexistent/file"]).fails_with("cannot read /nonexistent/file");
    vault.hush(&["secret", "create", "dir", "/etc"]).fails_with("cannot read /etc");
    vault.hush(&["secret", "inspect", "missing"]).fails_with("secret missing not found");
    vault.hush(&["secret", "rm", "missing"]).fails_with("secret missing not found");
    vault.hush_stdin(&["secret", "rotate", "missing", "-"], b"x").fails_with("secret missing not found");
    vault.hush_stdin(&["secret", "rotate", "existing", "-"], b"").fails_with("secret data is empty");
    vault.hush(&["secret", "inspect", "zzzzzzzzzzzzzzzzzzzzzzzzz"]).fails_with("not found");
    vault.hush(&["secret", "ls", "--filter", "driver=x"]).fails_with("invalid filter");
    assert_eq!(state(&vault), before, "a refused command changed the store");

    // The largest accepted values are accepted.
    vault.hush_stdin(&["secret", "create", "max", "-"], &vec![b'x'; 511_999]).ok();
    vault.hush_stdin(&["config", "create", "max", "-"], &vec![b'x'; 1_023_999]).ok();
}

#[test]
fn ambiguous_id_prefix_is_an_error_naming_the_count() {
    let vault = TestVault::start_new();
    let mut ids = Vec::new();
    // 37 IDs over 36 possible first characters: two must share one.
    for i in 0..37 {
        ids.push(vault.hush_stdin(&["secret", "create", &format!("s{i}"), "-"], b"v").ok().trim().to_string());
    }
    let prefix = ids.iter().find(|a| ids.iter().filter(|b| b[..1] == a[..1]).count() > 1).unwrap()[..1].to_string();
    let count = ids.iter().filter(|id| id.starts_with(&prefix)).count();
    let before = state(&vault);
    vault.hush(&["secret", "rm", &prefix]).fails_with(&format!("secret {prefix} is ambiguous ({count} matches found)"));
    vault.hush(&["secret", "inspect", &prefix]).fails_with("is ambiguous");
    assert_eq!(state(&vault), before);
}

#[test]
fn missing_connection_settings_are_named() {
    let vault = TestVault::start_new();
    let run = Run::from_command(vault.command().env_remove("HUSH_VAULT").args(["secret", "ls"]));
    run.fails_with("set HUSH_VAULT");
    let run = Run::from_command(vault.command().env_remove("HUSH_TLS_DIR").args(["secret", "ls"]));
    run.fails_with("set HUSH_TLS_DIR");
    let run = Run::from_command(vault.command().env("HUSH_VAULT", "127.0.0.1:1").args(["secret", "ls"]));
    run.fails_with("cannot reach the vault at 127.0.0.1:1");
}

/// A secret created with `value`; returns its ID.
fn create(vault: &TestVault, kind: &str, args: &[&str], value: &[u8]) -> String {
    let mut all = vec![kind, "create"];
    all.extend_from_slice(args);
    all.push("-");
    vault.hush_stdin(&all, value).ok().trim().to_string()
}

#[test]
fn docker_lookup_listing_and_inspect_shape() {
    let vault = TestVault::start_new();
    let ddx = create(&vault, "secret", &["--label", "env=prod", "ddx"], b"v");
    for name in ["item10", "item2", "item1"] {
        create(&vault, "secret", &["--label", "env=", name], b"v");
    }

    // Names are unique regardless of case, and found in any case.
    vault.hush_stdin(&["secret", "create", "DDX", "-"], b"v").fails_with("secret DDX already exists");
    assert_eq!(json(&vault.hush(&["secret", "inspect", "DDX"]))[0]["ID"], ddx.as_str());
    // Natural order; filters as Docker's.
    let names = |args: &[&str]| {
        let mut all = vec!["secret", "ls", "--format", "{{.Name}}"];
        all.extend_from_slice(args);
        vault.hush(&all).ok().lines().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(names(&[]), ["ddx", "item1", "item2", "item10"]);
    assert_eq!(names(&["--filter", "name=ITEM1"]), ["item1", "item10"]);
    assert_eq!(names(&["--filter", "names=ITEM1"]), ["item1"]);
    assert_eq!(names(&["--filter", "label=env="]), ["ddx", "item1", "item2", "item10"]);
    assert_eq!(names(&["--filter", "label=env=prod"]), ["ddx"]);

    // Go templates on ls and inspect.
    let row = vault.hush(&[
        "secret",
        "ls",
        "--filter",
        "names=ddx",
        "--format",
        r#"{{.ID}} {{.Label "env"}} {{.Labels}} {{.Version}}"#,
    ]);
    assert_eq!(row.ok(), format!("{ddx} prod env=prod 1\n"));
    let table = vault.hush(&["secret", "ls", "--filter", "names=ddx", "--format", r"table {{.Name}}\t{{.Labels}}"]);
    assert_eq!(table.ok(), "NAME      LABELS\nddx       env=prod\n");
    let line = vault.hush(&["secret", "ls", "--filter", "names=ddx", "--format", "{{json .}}"]);
    let line: Value = serde_json::from_str(line.ok().trim()).unwrap();
    assert_eq!(
        (line["Name"].as_str(), line["Labels"].as_str(), line["Driver"].as_str()),
        (Some("ddx"), Some("env=prod"), Some(""))
    );
    let inspected = vault.hush(&[
        "secret",
        "inspect",
        "-f",
        r#"{{.Spec.Name}} {{.Version.Index}} {{index .Spec.Labels "env"}}"#,
        "ddx",
    ]);
    assert_eq!(inspected.ok(), "ddx 1 prod\n");
    vault.hush(&["secret", "ls", "--format", "{{.Nope}}"]).fails_with("invalid format template");
    vault.hush(&["secret", "ls", "--format", "{{.Name"]).fails_with("invalid format template");

    // Missing objects: `[]` and exit 1; the found ones still print; --pretty prints nothing.
    let missing = vault.hush(&["secret", "inspect", "nope"]);
    assert_eq!((missing.status.code(), missing.stdout.as_str()), (Some(1), "[]\n"));
    assert_eq!(missing.stderr, "error: secret nope not found\n");
    let some = vault.hush(&["secret", "inspect", "ddx", "nope"]);
    assert_eq!(some.status.code(), Some(1));
    assert_eq!(serde_json::from_str::<Value>(&some.stdout).unwrap().as_array().unwrap().len(), 1);
    let pretty = vault.hush(&["secret", "inspect", "--pretty", "ddx", "nope"]);
    assert_eq!((pretty.status.code(), pretty.stdout.as_str()), (Some(1), ""));
    let templated = vault.hush(&["secret", "inspect", "-f", "{{.ID}}", "nope"]);
    assert_eq!((templated.status.code(), templated.stdout.as_str()), (Some(1), "\n"));

    // rotate --if-changed adds a version only for a new value; --pretty lists versions.
    vault.hush_stdin(&["secret", "rotate", "--if-changed", "ddx", "-"], b"v").ok();
    assert_eq!(vault.hush(&["secret", "inspect", "-f", "{{.Version.Index}}", "ddx"]).ok(), "1\n");
    vault.hush_stdin(&["secret", "rotate", "--if-changed", "ddx", "-"], b"w").ok();
    vault.hush_stdin(&["secret", "rotate", "ddx", "-"], b"w").ok();
    assert_eq!(vault.hush(&["secret", "inspect", "-f", "{{.Version.Index}}", "ddx"]).ok(), "3\n");
    let pretty = vault.hush(&["secret", "inspect", "--pretty", "ddx"]);
    let versions: Vec<&str> = pretty.ok().lines().skip_while(|l| *l != "Versions:").skip(1).collect();
    assert_eq!(versions.len(), 3, "{pretty:?}");
    assert!(versions[2].starts_with(" - 3   ") && versions[2].ends_with("   1 byte"), "{versions:?}");
}

#[test]
fn service_references_name_objects_exactly() {
    let vault = TestVault::start_new();
    let id = create(&vault, "secret", &["ddx"], b"v");
    create(&vault, "config", &["conf"], b"c");
    let before = vault.hush(&["service", "ls", "-q"]).ok().to_string();
    vault
        .hush(&["service", "create", "web", "--secret", &format!("source={}", &id[..8])])
        .fails_with(&format!("{} is the ID of ddx", &id[..8]));
    vault.hush(&["service", "create", "web", "--secret", &id]).fails_with("is the ID of ddx");
    vault.hush(&["service", "create", "web", "--secret", "DDX"]).fails_with("did you mean ddx?");
    assert_eq!(vault.hush(&["service", "ls", "-q"]).ok(), before);
    // A relative config target is relative to /, as Docker's.
    vault
        .hush(&[
            "service",
            "create",
            "web",
            "--secret",
            "source=ddx,target=rel/s",
            "--config",
            "source=conf,target=rel/c",
        ])
        .ok();
    let service = json(&vault.hush(&["service", "inspect", "web"]));
    assert_eq!(service[0]["Configs"][0]["Target"], "/rel/c");
    assert_eq!(service[0]["Secrets"][0]["Target"], "rel/s");
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    let vault = TestVault::start_new();
    for i in 0..3 {
        create(&vault, "secret", &[&format!("s{i}")], b"v");
    }
    for args in [
        &["secret", "ls"][..],
        &["secret", "ls", "--format", "{{.Name}}"],
        &["secret", "inspect", "--pretty", "s1"],
        &["audit"],
    ] {
        // The reader is gone before hush writes anything: every write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = vault.command().args(args).stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{args:?}");
    }
}
