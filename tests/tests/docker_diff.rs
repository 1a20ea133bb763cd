//! Hush against Docker Swarm on this machine: the same operations through `docker` and `hush`,
//! outputs compared wherever Hush claims Docker's behaviour. Where Hush deliberately differs
//! (docs/SEMANTICS.md, "Differences from Docker"), Docker's side is checked too, so the document
//! stays true. Objects carry a random prefix; everything made in the swarm is removed again, and a
//! swarm that was already active is kept as it was.

use hush_tests::docker::{self, SwarmService, docker};
use hush_tests::{DEADLINE, Run, TestAgent, TestVault};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Removes every secret, config and stack this test made in the swarm (by prefix) on drop.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ls = |kind: &str| docker(&[kind, "ls", "-q", "--filter", &format!("name={}", self.0)]).stdout;
        let services = ls("service");
        if !services.trim().is_empty() {
            docker(&[&["service", "rm"][..], &services.split_whitespace().collect::<Vec<_>>()].concat());
        }
        // A removed service lets go of its secrets at once; a stack's objects go with `stack rm`.
        docker(&["stack", "rm", &format!("{}stk", self.0)]);
        for kind in ["secret", "config"] {
            let ids = ls(kind);
            if !ids.trim().is_empty() {
                docker(&[&[kind, "rm"][..], &ids.split_whitespace().collect::<Vec<_>>()].concat());
            }
        }
    }
}

fn with_stdin(mut command: Command, input: &[u8]) -> Run {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// One vault and the swarm, driven side by side.
struct Both<'a> {
    vault: &'a TestVault,
}

impl Both<'_> {
    fn docker(&self, args: &[&str]) -> Run {
        docker(args)
    }
    fn hush(&self, args: &[&str]) -> Run {
        self.vault.hush(args)
    }
    fn create(&self, kind: &str, args: &[&str], value: &[u8]) -> (Run, Run) {
        let all = [&[kind, "create"][..], args, &["-"]].concat();
        let mut d = Command::new("docker");
        d.args(&all);
        (with_stdin(d, value), self.vault.hush_stdin(&all, value))
    }
    /// Runs `args` through both; their exit statuses and standard outputs must be the same.
    #[track_caller]
    fn same(&self, args: &[&str]) -> String {
        let (d, h) = (self.docker(args), self.hush(args));
        assert_eq!(d.status.success(), h.status.success(), "{args:?}: docker {d:?} hush {h:?}");
        assert_eq!(d.stdout, h.stdout, "{args:?}: docker {d:?} hush {h:?}");
        h.stdout
    }
    #[track_caller]
    fn both_create(&self, kind: &str, args: &[&str], value: &[u8]) -> bool {
        let (d, h) = self.create(kind, args, value);
        assert_eq!(d.status.success(), h.status.success(), "{kind} create {args:?}: docker {d:?} hush {h:?}");
        h.status.success()
    }
}

fn prefix() -> String {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let letters: String = (0..6).map(|i| (b'a' + ((seed >> (i * 5)) % 26) as u8) as char).collect();
    format!("hd{letters}")
}

#[test]
fn secrets_and_configs_behave_as_dockers() {
    docker::swarm();
    let vault = TestVault::start_new();
    let both = Both { vault: &vault };
    let p = prefix();
    let _cleanup = Cleanup(p.clone());
    let name = |n: &str| format!("{p}{n}");

    // Names: unique regardless of case, found in any case, validated alike.
    assert!(both.both_create("secret", &["--label", "env=prod", &name("ddx")], b"v"));
    assert!(!both.both_create("secret", &[&name("DDX")], b"v"));
    assert_eq!(
        both.same(&["secret", "inspect", "-f", "{{.Spec.Name}}", &name("DDX").to_uppercase()]),
        format!("{}\n", name("ddx"))
    );
    assert!(!both.both_create("secret", &["bad name"], b"v"));
    assert!(!both.both_create("secret", &[&format!("{p}{}", "x".repeat(65 - p.len()))], b"v"));
    assert!(both.both_create("secret", &[&format!("{p}{}", "x".repeat(64 - p.len()))], b"v"));
    // Sizes: under 500 KiB.
    assert!(!both.both_create("secret", &[&name("big")], &vec![b'x'; 512_000]));
    assert!(both.both_create("secret", &[&name("max")], &vec![b'x'; 511_999]));

    // ls: natural order, filters, templates, tables.
    for (n, labels) in
        [("item10", &["env=dev", "team=b"][..]), ("item2", &["env="]), ("Item3", &["team=b"]), ("item1", &["env=prod"])]
    {
        let labels: Vec<&str> = labels.iter().flat_map(|l| ["--label", l]).collect();
        assert!(both.both_create("secret", &[&labels[..], &[&name(n)]].concat(), b"v"));
    }
    let ls = |args: &[&str]| both.same(&[&["secret", "ls", "--filter", &format!("name={p}")][..], args].concat());
    let order = ls(&["--format", "{{.Name}}"]);
    assert!(order.find("Item3").unwrap() < order.find("item1\n").unwrap(), "{order}");
    assert!(order.find("item2").unwrap() < order.find("item10").unwrap(), "{order}");
    ls(&["--filter", "label=env=", "--format", "{{.Name}}"]);
    ls(&["--filter", "label=env", "--format", "{{.Name}}"]);
    ls(&["--filter", "label=env=prod", "--format", "{{.Name}}"]);
    ls(&["--filter", "label=env", "--filter", "label=team", "--format", "{{.Name}}"]);
    let exact = format!("names={}", name("ITEM1").to_uppercase());
    assert_eq!(
        both.same(&["secret", "ls", "--filter", &exact, "--format", "{{.Name}}"]),
        format!("{}\n", name("item1"))
    );
    // A documented difference: with `name=` also given, Docker 20.10 ignores `names=`; Hush applies both.
    let d = both.docker(&["secret", "ls", "--filter", &exact, "--filter", &format!("name={p}"), "-q"]);
    let h = both.hush(&["secret", "ls", "--filter", &exact, "--filter", &format!("name={p}"), "-q"]);
    assert!(d.ok().lines().count() > 1 && h.ok().lines().count() == 1, "docker {d:?} hush {h:?}");
    ls(&["--filter", &format!("name={}", name("ITEM1").to_uppercase()), "--format", "{{.Name}}"]);
    // (Times are left out: the two calls may straddle a second; labels one per object: Docker
    // joins them in map order.)
    ls(&["--filter", "label=env=prod", "--format", r#"{{.Name}} {{.Labels}} {{.Label "env"}} {{upper .Name}}"#]);
    ls(&["--filter", "label=env=prod", "--format", r"table {{.Name}}\t{{.Labels}}"]);
    ls(&["--filter", "label=env=prod", "--format", "table {{.Name}}"]);
    ls(&["--filter", "label=env=prod", "--format", r#"{{.Name}}\t{{.Label "env"}}"#]);
    let id_prefix = both.hush(&["secret", "inspect", "-f", "{{.ID}}", &name("ddx")]).ok()[..1].to_string();
    assert!(both.hush(&["secret", "ls", "--filter", &format!("id={id_prefix}"), "-q"]).ok().contains(&id_prefix));
    // Templates Docker's CLI gives ls: `{{json .}}` has Docker's keys (Hush adds Version).
    let json_line = |run: Run| -> serde_json::Value { serde_json::from_str(run.ok().trim()).unwrap() };
    let filter = format!("names={}", name("ddx"));
    let d = json_line(both.docker(&["secret", "ls", "--filter", &filter, "--format", "{{json .}}"]));
    let h = json_line(both.hush(&["secret", "ls", "--filter", &filter, "--format", "{{json .}}"]));
    for (key, value) in d.as_object().unwrap() {
        match key.as_str() {
            "ID" | "CreatedAt" | "UpdatedAt" => assert!(h[key].is_string(), "{key} in ls {{{{json .}}}}: {h}"),
            _ => assert_eq!(h.get(key), Some(value), "{key} in ls {{{{json .}}}}"),
        }
    }

    // inspect: Docker's shape and templates.
    let inspect = |args: &[&str]| both.same(&[&["secret", "inspect"][..], args].concat());
    inspect(&["-f", r#"{{.Spec.Name}} {{json .Spec.Labels}} {{index .Spec.Labels "env"}}"#, &name("ddx")]);
    inspect(&["-f", "{{range $k, $v := .Spec.Labels}}{{$k}}={{$v}};{{end}} {{len .Spec.Labels}}", &name("ddx")]);
    inspect(&["-f", r#"{{join (split .Spec.Name "d") "-"}} {{lower .Spec.Name}} {{title "a b"}}"#, &name("ddx")]);
    let shape = |run: Run| -> serde_json::Value { serde_json::from_str(run.ok()).unwrap() };
    let d = shape(both.docker(&["secret", "inspect", &name("ddx")]));
    let h = shape(both.hush(&["secret", "inspect", &name("ddx")]));
    for key in d[0].as_object().unwrap().keys() {
        assert!(h[0].get(key).is_some(), "hush inspect lacks {key}: {h}");
    }
    assert!(d[0]["Version"]["Index"].is_u64() && h[0]["Version"]["Index"].is_u64());
    assert_eq!(d[0]["Spec"], h[0]["Spec"]);

    // Missing objects: `[]` and exit 1; found ones still printed; --pretty prints nothing.
    let missing = name("nope");
    inspect(&[&missing]);
    assert_eq!(both.hush(&["secret", "inspect", &missing]).stdout, "[]\n");
    inspect(&["--pretty", &name("ddx"), &missing]);
    inspect(&["-f", "{{.Spec.Name}}", &name("ddx"), &missing]);
    inspect(&["-f", "{{.Spec.Name}}", &missing]);
    for run in [
        both.docker(&["secret", "inspect", &name("ddx"), &missing]),
        both.hush(&["secret", "inspect", &name("ddx"), &missing]),
    ] {
        assert_eq!(run.status.code(), Some(1));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap().as_array().unwrap().len(), 1);
    }
    // The wording: Docker's daemon says `secret X not found`, Hush says it after its `error: `.
    let (d, h) = (both.docker(&["secret", "inspect", &missing]), both.hush(&["secret", "inspect", &missing]));
    assert!(d.stderr.contains(&format!("secret {missing} not found")), "{d:?}");
    assert_eq!(h.stderr, format!("error: secret {missing} not found\n"));
    // rm: each reference in turn, the found ones printed, exit 1 if any failed.
    assert!(both.both_create("secret", &[&name("gone")], b"v"));
    both.same(&["secret", "rm", &name("gone"), &missing]);

    // Configs: data in inspect, base64.
    assert!(both.both_create("config", &[&name("conf")], b"listen 80;\n"));
    both.same(&["config", "inspect", "-f", "{{json .Spec.Data}} {{.Spec.Name}}", &name("conf")]);
    // A documented difference: Docker runs inspect templates on its Go types (Data prints as a
    // byte list, times as Go times), Hush on the JSON it prints (base64, RFC 3339).
    let d = both.docker(&["config", "inspect", "-f", "{{.Spec.Data}}", &name("conf")]);
    assert!(d.ok().starts_with("[108 105"), "{d:?}");
    assert_eq!(both.hush(&["config", "inspect", "-f", "{{.Spec.Data}}", &name("conf")]).ok(), "bGlzdGVuIDgwOwo=\n");
    assert!(!both.both_create("config", &[&name("CONF")], b"x"));
}

/// Waits for the one running container of swarm service `service`.
fn container_of(service: &str) -> String {
    let start = Instant::now();
    loop {
        let ps = docker(&["ps", "-q", "--filter", &format!("label=com.docker.swarm.service.name={service}")]);
        if let Some(id) = ps.stdout.split_whitespace().next() {
            return id.to_string();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no container for {service}: {:?}",
            docker(&["service", "ps", service, "--no-trunc"])
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn service_references_behave_as_dockers() {
    docker::swarm();
    let image = docker::image();
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    let both = Both { vault: &vault };
    let p = prefix();
    let _cleanup = Cleanup(p.clone());
    let name = |n: &str| format!("{p}{n}");
    for kind in ["secret", "config"] {
        for n in ["a", "b"] {
            assert!(both.both_create(kind, &[&name(n)], format!("{kind}-{n}").as_bytes()));
        }
    }

    // Where files land, with their owners and modes: one real swarm task, one hush task.
    let refs = [
        "--secret",
        &name("a"),
        "--secret",
        &format!("source={},target=rel/s,uid=100,gid=101,mode=0400", name("b")),
        "--config",
        &format!("source={},target=rel/c", name("a")),
        "--config",
        &format!("source={},mode=0440", name("b")),
    ]
    .map(str::to_string);
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    let service = name("svc");
    let _service = SwarmService(service.clone());
    let created = both.docker(
        &[&["service", "create", "-d", "--no-resolve-image", "--name", &service][..], &refs, &[&image, "sleep", "600"]]
            .concat(),
    );
    created.ok();
    both.hush(&[&["service", "create", &service][..], &refs].concat()).ok();
    let paths = format!("/run/secrets/{} /run/secrets/rel/s /rel/c /{}", name("a"), name("b"));
    let script = format!("for f in {paths}; do stat -c '%n %u %g %a' $f; cat $f; echo; done");
    let in_swarm = docker(&["exec", &container_of(&service), "sh", "-c", &script]);
    let in_hush = agent.run(&vault, &["--service", &service, "--", "sh", "-c", &script]);
    assert_eq!(in_hush.ok(), in_swarm.ok());

    // References both refuse: an ID or ID prefix as source, another case, a duplicate target.
    let id = both.hush(&["secret", "inspect", "-f", "{{.ID}}", &name("a")]).ok().trim().to_string();
    let docker_id = both.docker(&["secret", "inspect", "-f", "{{.ID}}", &name("a")]).ok().trim().to_string();
    // `docker service create` of service x (no replicas, image by ID) with these --secret SPECs.
    let docker_create = |specs: &[&str]| {
        let x = name("x");
        let mut args = vec!["service", "create", "-d", "--replicas", "0", "--no-resolve-image", "--name", &x];
        for spec in specs {
            args.extend(["--secret", spec]);
        }
        args.push(&image);
        both.docker(&args)
    };
    let refused = |hush_spec: &str, docker_spec: &str| {
        let d = docker_create(&[docker_spec]);
        let _gone = SwarmService(name("x"));
        let h = both.hush(&["service", "create", &name("x"), "--secret", hush_spec]);
        assert!(!d.status.success() && !h.status.success(), "{hush_spec}: docker {d:?} hush {h:?}");
    };
    refused(&format!("source={}", &id[..8]), &format!("source={}", &docker_id[..8]));
    refused(&format!("source={id}"), &format!("source={docker_id}"));
    refused(&name("A").to_uppercase(), &name("A").to_uppercase());
    let dup = format!("{},target=same", name("a"));
    let d = docker_create(&[&format!("source={dup}"), &format!("source={},target=same", name("b"))]);
    drop(SwarmService(name("x")));
    let h = both.hush(&[
        "service",
        "create",
        &name("x"),
        "--secret",
        &format!("source={dup}"),
        "--secret",
        &format!("source={},target=same", name("b")),
    ]);
    assert!(!d.status.success() && !h.status.success());

    // Stricter than Docker, on purpose (docs/SEMANTICS.md): Docker accepts each, Hush refuses.
    let a = name("a");
    let stricter: [(&str, Vec<String>); 6] = [
        (
            "a secret and a config on one target",
            vec![
                "--secret".into(),
                format!("source={a},target=/x"),
                "--config".into(),
                format!("source={a},target=/x"),
            ],
        ),
        ("an empty path component", vec!["--secret".into(), format!("source={a},target=a//b")]),
        ("`..` in a target", vec!["--secret".into(), format!("source={a},target=../x")]),
        ("a mode above 0777", vec!["--secret".into(), format!("source={a},mode=01777")]),
        ("a decimal-looking mode", vec!["--secret".into(), format!("source={a},mode=400")]),
        ("uid -1", vec!["--secret".into(), format!("source={a},uid=-1")]),
    ];
    for (what, args) in stricter {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let d = both.docker(
            &[
                &["service", "create", "-d", "--replicas", "0", "--no-resolve-image", "--name", &name("x")][..],
                &args,
                &[&image],
            ]
            .concat(),
        );
        drop(SwarmService(name("x")));
        let h = both.hush(&[&["service", "create", &name("x")][..], &args].concat());
        assert!(d.status.success(), "{what}: Docker now refuses it too: {d:?}");
        assert!(!h.status.success(), "{what}: Hush accepted it: {h:?}");
    }
}

#[test]
fn compose_files_against_stack_deploy() {
    docker::swarm();
    let image = docker::image();
    let vault = TestVault::start_new();
    let p = prefix();
    let _cleanup = Cleanup(p.clone());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw.txt"), "pw").unwrap();
    let file = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let compose = |secret: &str, config: &str| {
        format!(
            "services:\n  web:\n    image: {image}\n    deploy: {{replicas: 0}}\n    secrets: [db]\n    configs:\n      - {{source: c, target: rel/c}}\n\
             secrets:\n  db: {secret}\nconfigs:\n  c: {config}\n"
        )
    };
    let stack = format!("{p}stk");
    let deploy = |path: &str| docker(&["stack", "deploy", "-c", path, "--resolve-image", "never", &stack]);
    let hush = |path: &str| vault.hush(&["compose", "deploy", "-f", path, "-p", &stack]);

    // The same file: the same object names (PROJECT_KEY), the same targets.
    let plain = file("plain.yaml", compose("{file: ./pw.txt}", "{file: ./pw.txt}"));
    deploy(&plain).ok();
    hush(&plain).ok();
    let names = |run: Run| run.ok().lines().filter(|l| l.contains(&stack)).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        names(docker(&["secret", "ls", "--format", "{{.Name}}"])),
        names(vault.hush(&["secret", "ls", "--format", "{{.Name}}"]))
    );
    let target = docker(&[
        "service",
        "inspect",
        &format!("{stack}_web"),
        "--format",
        "{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{.File.Name}}{{end}}",
    ]);
    assert_eq!(target.ok(), "rel/c\n");
    let service = vault.hush(&["service", "inspect", &format!("{stack}_web")]);
    assert!(service.ok().contains(r#""Target": "/rel/c""#), "{service:?}");

    // Where Hush follows the compose specification beyond `docker stack deploy`:
    // `environment:` secrets and `content:` configs, which stack deploy rejects.
    let env = file("env.yaml", compose("{environment: HUSH_DIFF_PW}", "{file: ./pw.txt}"));
    assert!(deploy(&env).stderr.contains("Additional property environment is not allowed"));
    let content = file("content.yaml", compose("{file: ./pw.txt}", "{content: hi}"));
    assert!(deploy(&content).stderr.contains("Additional property content is not allowed"));
    assert!(
        vault
            .command()
            .env("HUSH_DIFF_PW", "pw")
            .args(["compose", "config", "-f", &env])
            .output()
            .unwrap()
            .status
            .success()
    );
    vault.hush(&["compose", "config", "-f", &content]).ok();
    // `.env` beside the file: stack deploy ignores it (the variable is empty), Hush reads it.
    std::fs::write(dir.path().join(".env"), "SRC=./pw.txt\n").unwrap();
    let dotenv = file("dotenv.yaml", compose("{file: \"${SRC}\"}", "{file: ./pw.txt}"));
    assert!(!deploy(&dotenv).status.success());
    assert!(vault.hush(&["compose", "config", "-f", &dotenv]).ok().contains("pw.txt"));
    // Stricter than stack deploy, on purpose: labels on an external secret (never created, so
    // they would be silently dropped).
    let external = format!("{p}ext");
    with_stdin(
        {
            let mut c = Command::new("docker");
            c.args(["secret", "create", &external, "-"]);
            c
        },
        b"x",
    )
    .ok();
    vault.hush_stdin(&["secret", "create", &external, "-"], b"x").ok();
    let labelled = file(
        "labelled.yaml",
        compose(&format!("{{external: true, name: {external}, labels: {{a: b}}}}"), "{file: ./pw.txt}"),
    );
    deploy(&labelled).ok();
    vault.hush(&["compose", "config", "-f", &labelled]).fails_with("an external secret takes only name");
    // YAML 1.1 booleans: both refuse `external: yes`.
    let yes = file("yes.yaml", compose("{external: yes}", "{file: ./pw.txt}"));
    assert!(!deploy(&yes).status.success());
    vault.hush(&["compose", "config", "-f", &yes]).fails_with("external");
}
