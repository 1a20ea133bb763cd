//! Real containers (Docker, Podman, Swarm, docker-compose) reading Hush's service directories,
//! and every container that must not read them trying for real.

use hush_tests::docker::{self, Container, Engine, PODMAN_ULIMITS, PodmanService, SwarmService};
use hush_tests::{DEADLINE, Run, TestAgent, TestVault, bin, marker, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A vault, an agent joined to it, and the test image.
struct Fixture {
    vault: TestVault,
    agent: TestAgent,
    image: String,
}

impl Fixture {
    fn new(agent_args: &[&str]) -> Self {
        let image = docker::image();
        let vault = TestVault::start_new();
        let agent = TestAgent::join_with(&vault, agent_args);
        Self { vault, agent, image }
    }

    /// `hush ARGS` with this agent's mount root.
    fn hush(&self, args: &[&str]) -> Run {
        Run::from_command(self.vault.command().env("HUSH_MOUNT_ROOT", self.agent.mount_root()).args(args))
    }

    fn secret(&self, name: &str, value: &str) {
        self.vault.hush_stdin(&["secret", "create", name, "-"], value.as_bytes()).ok();
    }

    fn service_dir(&self, service: &str) -> PathBuf {
        self.agent.mount_root().join("services").join(service)
    }

    /// Creates a service and waits until the agent serves its directory.
    fn service(&self, name: &str, refs: &[&str]) {
        let mut args = vec!["service", "create", name];
        args.extend_from_slice(refs);
        self.vault.hush(&args).ok();
        let dir = self.service_dir(name);
        wait_for("the service directory", || dir.is_dir().then_some(()));
    }

    /// The `--mount`/`--label` flags of `hush service mounts`.
    fn mounts(&self, service: &str, format: &str) -> Vec<String> {
        self.hush(&["service", "mounts", service, "--format", format])
            .ok()
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// Waits (agents ship events every few ms) until the entries matching `filter` include one
    /// with every `want` field; returns them.
    fn expect_entry(&self, filter: &[&str], want: &[(&str, &str)]) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let entries = self.audit(filter);
            if has_entry(&entries, want) {
                return entries;
            }
            assert!(started.elapsed() < DEADLINE, "no entry {want:?} in audit {filter:?}: {entries:?}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn audit(&self, filter: &[&str]) -> Vec<Value> {
        let mut args = vec!["audit", "--format", "json"];
        args.extend_from_slice(filter);
        serde_json::from_str::<Value>(self.vault.hush(&args).ok()).expect("JSON").as_array().expect("array").clone()
    }
}

fn docker_run(args: &[&str]) -> Run {
    docker::docker(&[&["run", "--rm", "--network", "none"], args].concat())
}

fn unique(tag: &str) -> String {
    format!("hush-{tag}-{}-{:x}", std::process::id(), Instant::now().elapsed().as_nanos() ^ rand_ish())
}

fn rand_ish() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() & 0xffff_ffff
}

fn field<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn has_entry(entries: &[Value], want: &[(&str, &str)]) -> bool {
    entries.iter().any(|e| {
        want.iter().all(|(k, v)| match e.get(*k) {
            Some(Value::String(s)) => s == v,
            // A number or a bool, compared as JSON: `v` parsed, not the value printed.
            Some(other) => v.parse::<Value>().is_ok_and(|parsed| parsed == *other),
            None => false,
        })
    })
}

/// The harness itself: an engine answers, the image runs without a network, podman runs the same rootfs.
#[test]
fn harness_runs_containers_from_the_local_image() {
    let image = docker::image();
    assert!(image.starts_with("sha256:"), "image ID: {image}");
    let run = docker_run(&[&image, "sh", "-c", "echo hello"]);
    assert_eq!(run.ok().trim(), "hello");
    let podman_image = docker::podman_image();
    let container = Container::run_detached(Engine::Podman, &["--network", "none", &podman_image, "sleep", "30"]);
    assert_eq!(container.exec(&["echo", "hi"]).ok().trim(), "hi");
    docker::swarm();
    assert_eq!(docker::docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).ok().trim(), "active");
}

/// Docker containers of a service read its secrets and configs, with the kernel enforcing
/// uid/gid/mode; every other caller is refused and audited; rotations reach a running
/// container; a container's exit ends its task.
#[test]
fn docker_containers_are_tasks_of_their_service() {
    let fx = Fixture::new(&[]);
    let db = marker("db");
    fx.secret("db", &db);
    fx.secret("other", &marker("other"));
    fx.secret("bsecret", &marker("b"));
    fx.vault.hush_stdin(&["config", "create", "conf", "-"], b"listen 80\n").ok();
    fx.service(
        "web",
        &[
            "--secret",
            "source=db,target=db,uid=100,gid=101,mode=0400",
            "--secret",
            "source=other,target=other,mode=0400",
            "--config",
            "source=conf,target=/etc/app.conf",
        ],
    );
    fx.service("b", &["--secret", "bsecret"]);
    let image = fx.image.as_str();

    // The flags, on one line, as `docker run $(hush service mounts web)` uses them.
    let web_flags = fx.mounts("web", "docker");
    let root = fx.agent.mount_root();
    let dir = fx.service_dir("web");
    assert_eq!(
        web_flags,
        [
            "--mount".to_string(),
            format!("type=bind,source={},target=/run/secrets,readonly", dir.join("run/secrets").display()),
            "--mount".into(),
            format!("type=bind,source={},target=/etc/app.conf,readonly", dir.join("root/etc/app.conf").display()),
            "--label".into(),
            "io.hush.service=web".into(),
        ]
    );
    let swarm_flags = fx.mounts("web", "swarm");
    assert_eq!(swarm_flags[4..], ["--container-label".to_string(), "io.hush.service=web".into()]);

    // 1. A secret and a config, read by `hush docker run` (root in the container).
    let reader = unique("reader");
    let run = fx.hush(&[
        "docker",
        "run",
        "--service",
        "web",
        "--rm",
        "--network",
        "none",
        "--name",
        &reader,
        image,
        "sh",
        "-c",
        "cat /run/secrets/db; echo; cat /etc/app.conf",
    ]);
    assert_eq!(run.ok(), format!("{db}\nlisten 80\n"));

    // 2. --user 100:101 reads the 0400 file it owns, not the root-owned one.
    let user = unique("user");
    let flags: Vec<&str> = web_flags.iter().map(String::as_str).collect();
    let script = "cat /run/secrets/db; echo; cat /run/secrets/other && echo READ-OTHER";
    let run = docker_run(&[&flags[..], &["--name", &user, "--user", "100:101", image, "sh", "-c", script]].concat());
    assert!(run.stdout.starts_with(&db), "{run:?}");
    assert!(!run.stdout.contains("READ-OTHER") && run.stderr.contains("Permission denied"), "{run:?}");

    // 3. Without the label, binding the directory: refused.
    let unlabelled = unique("nolabel");
    let run = docker_run(&[&flags[..4], &["--name", &unlabelled, image, "cat", "/run/secrets/db"]].concat());
    assert!(!run.status.success() && run.stderr.contains("Permission denied"), "{run:?}");
    assert!(!run.stdout.contains(&db));

    // 4. A container of service b (binding b's directory too) reading web's directory: refused.
    let intruder = unique("intruder");
    let b_src = format!("type=bind,source={},target=/b,readonly", fx.service_dir("b").join("run/secrets").display());
    let script = "cat /b/bsecret >/dev/null && echo READ-B; cat /run/secrets/db";
    let b_flags = ["--mount", &b_src, "--label", "io.hush.service=b", "--name", &intruder, image, "sh", "-c", script];
    let run = docker_run(&[&flags[..2], &b_flags[..]].concat());
    assert!(run.stdout.starts_with("READ-B") && !run.stdout.contains(&db), "{run:?}");
    assert!(!run.status.success() && run.stderr.contains("Permission denied"), "{run:?}");
    // ... and a container labelled web that binds only b's directory reads neither.
    let misfit = unique("misfit");
    let run = docker_run(&[
        "--mount",
        &b_src,
        "--label",
        "io.hush.service=web",
        "--name",
        &misfit,
        image,
        "cat",
        "/b/bsecret",
    ]);
    assert!(!run.status.success() && run.stderr.contains("Permission denied"), "{run:?}");

    // 5. Host root: refused.
    let err = std::fs::read(dir.join("run/secrets/db")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    // A host process that writes itself into a running container's cgroup is still not in it.
    let sleeper = Container::run_detached(
        Engine::Docker,
        &[&flags[..], &["--network", "none", "--name", &unique("sleeper"), image, "sleep", "300"]].concat(),
    );
    assert_eq!(sleeper.exec(&["cat", "/run/secrets/db"]).ok(), db);
    let cgroup_intruder = host_reader_in_cgroup_of(&sleeper, &dir.join("run/secrets/db"));
    assert!(cgroup_intruder.contains("Permission denied"), "{cgroup_intruder}");

    // 6. A rotation reaches the running container.
    let rotated = marker("db2");
    fx.vault.hush_stdin(&["secret", "rotate", "db", "-"], rotated.as_bytes()).ok();
    wait_for("the rotated value in the container", || {
        (sleeper.exec(&["cat", "/run/secrets/db"]).stdout == rotated).then_some(())
    });

    // 7. Audit by container: the reader's opens name it; --task takes a container ID prefix.
    let reads = fx.expect_entry(
        &["--container", &reader],
        &[("op", "open"), ("container_name", &reader), ("image", image), ("secret", "db"), ("uid", "0")],
    );
    assert!(has_entry(&reads, &[("op", "task_start"), ("service", "web"), ("container_name", &reader)]), "{reads:?}");
    let container_id =
        field(reads.iter().find(|e| field(e, "op") == "open").expect("an open"), "container").to_string();
    assert_eq!(container_id.len(), 64);
    let by_prefix = fx.audit(&["--task", &container_id[..12]]);
    assert!(has_entry(&by_prefix, &[("op", "open"), ("container_name", &reader)]), "{by_prefix:?}");
    fx.expect_entry(
        &["--container", &user],
        &[("op", "open"), ("path", "/run/secrets/db"), ("uid", "100"), ("gid", "101")],
    );
    // (The kernel refused /run/secrets/other by its mode before asking the filesystem: no entry.)
    // Refusals are audited with the container that tried.
    fx.expect_entry(&["--container", &unlabelled], &[("op", "denied"), ("reason", "NoServiceLabel")]);
    fx.expect_entry(&["--container", &intruder], &[("op", "denied"), ("reason", "WrongService"), ("service", "web")]);
    fx.expect_entry(&["--container", &misfit], &[("op", "denied"), ("reason", "NotBindingServiceDir")]);
    fx.expect_entry(&["--service", "web"], &[("op", "denied"), ("reason", "NotOwner"), ("path", "/run/secrets/db")]);
    fx.expect_entry(&["--service", "web"], &[("op", "denied"), ("reason", "NotInContainer")]);

    // 8. A container's exit ends its task within a second or two.
    let name = fx.hush(&["audit", "--format", "json", "--task", &sleeper.id[..12]]).ok().to_string();
    assert!(name.contains("task_start"), "{name}");
    let stopped = Instant::now();
    docker::docker(&["rm", "-f", &sleeper.id]).ok();
    wait_for("task_end of the removed container", || {
        has_entry(&fx.audit(&["--task", &sleeper.id[..12]]), &[("op", "task_end")]).then_some(())
    });
    eprintln!("task_end {} ms after docker rm -f", stopped.elapsed().as_millis());
    wait_for("no container task left", || {
        let nodes = fx.vault.hush(&["node", "ls", "--format", "json"]);
        let nodes: Value = serde_json::from_str(nodes.ok()).expect("JSON");
        (nodes[0]["Tasks"].as_u64() == Some(0)).then_some(())
    });

    // 9. The errors users hit first.
    let run = fx.hush(&["docker", "run", "--service", "nosuch", image, "true"]);
    run.fails_with("service nosuch not found");
    let run = Run::from_command(fx.vault.command().env("HUSH_MOUNT_ROOT", "/nonexistent").args([
        "docker",
        "run",
        "--service",
        "web",
        image,
        "true",
    ]));
    run.fails_with("no Hush agent serves /nonexistent on this host");
    let _ = root;
}

/// Runs `cat PATH` from a host process that first moves itself into `container`'s cgroups
/// (what host root can do); returns what it printed.
fn host_reader_in_cgroup_of(container: &Container, path: &Path) -> String {
    let pid = container.pid();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let mut script = String::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let dir = match controllers {
            "" => format!("/sys/fs/cgroup/unified{path}"),
            c => format!("/sys/fs/cgroup/{}{path}", c.trim_start_matches("name=")),
        };
        script.push_str(&format!("echo $$ > {dir}/cgroup.procs 2>/dev/null; "));
    }
    script.push_str(&format!("grep -c {} /proc/self/cgroup; cat {} 2>&1", &container.id[..12], path.display()));
    let run = Run::from_command(Command::new("sh").args(["-c", &script]));
    assert!(run.stdout.lines().next().is_some_and(|n| n != "0"), "did not join the container's cgroups: {run:?}");
    run.stdout
}

/// A two-service compose file through `hush compose up` (docker-compose 1.29 here), and a
/// one-replica swarm service with the image by ID; a forged swarm label is refused.
#[test]
fn compose_and_swarm_containers_read_their_secrets() {
    let fx = Fixture::new(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (web_value, worker_value) = (marker("web"), marker("worker"));
    std::fs::write(dir.path().join("web.txt"), &web_value).expect("write");
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    image: ${IMAGE}\n    command: [\"sh\", \"-c\", \"cat /run/secrets/web_key; echo; sleep 300\"]\n    network_mode: none\n    secrets: [web_key]\n  worker:\n    image: ${IMAGE}\n    command: [\"sh\", \"-c\", \"cat /run/secrets/token; echo; cat /etc/worker.conf; echo; sleep 300\"]\n    network_mode: none\n    secrets:\n      - source: token\n        mode: 0400\n    configs:\n      - source: conf\n        target: /etc/worker.conf\nsecrets:\n  web_key:\n    file: ./web.txt\n  token:\n    environment: TOKEN\nconfigs:\n  conf:\n    content: workers 4\n",
    )
    .expect("write");
    let compose = |args: &[&str]| {
        Run::from_command(
            fx.vault
                .command()
                .env("HUSH_MOUNT_ROOT", fx.agent.mount_root())
                .env("IMAGE", &fx.image)
                .env("TOKEN", &worker_value)
                .current_dir(dir.path())
                .arg("compose")
                .args(args),
        )
    };
    let project = format!("hushc{}", std::process::id());
    // The file Docker runs: no secrets or configs left, binds and labels instead.
    let file = compose(&["config", "--for", "docker", "-p", &project]);
    let text = file.ok();
    assert!(
        !text.contains("\nsecrets:") && text.contains("io.hush.service") && text.contains("read_only: true"),
        "{text}"
    );
    compose(&["up", "-d", "-p", &project]).ok();
    let logs_of = |service: &str| {
        let filter = format!("label=com.docker.compose.service={service}");
        let project_filter = format!("label=com.docker.compose.project={project}");
        let id =
            docker::docker(&["ps", "-q", "--filter", &filter, "--filter", &project_filter]).ok().trim().to_string();
        assert!(!id.is_empty(), "no {service} container");
        docker::docker(&["logs", &id]).stdout
    };
    wait_for("web's secret in its logs", || logs_of("web").contains(&web_value).then_some(()));
    wait_for("worker's secret and config", || {
        let logs = logs_of("worker");
        (logs.contains(&worker_value) && logs.contains("workers 4")).then_some(())
    });
    fx.expect_entry(
        &["--service", &format!("{project}_worker")],
        &[("op", "open"), ("config", &format!("{project}_conf"))],
    );
    compose(&["down", "-p", &project]).ok();
    let left = docker::docker(&["ps", "-aq", "--filter", &format!("label=com.docker.compose.project={project}")]);
    assert_eq!(left.ok().trim(), "");

    // Swarm: one replica, image by ID, no registry.
    docker::swarm();
    let db = marker("swarm");
    fx.secret("db", &db);
    fx.service("api", &["--secret", "db"]);
    let name = unique("svc");
    let _service = SwarmService(name.clone());
    let mut args = vec!["service", "create", "--detach", "--no-resolve-image", "--name", &name];
    let flags = fx.mounts("api", "swarm");
    args.extend(flags.iter().map(String::as_str));
    args.extend([fx.image.as_str(), "sh", "-c", "sleep 300"]);
    docker::docker(&args).ok();
    let filter = format!("label=com.docker.swarm.service.name={name}");
    let task = wait_for("the swarm task's container", || {
        let id = docker::docker(&["ps", "-q", "--no-trunc", "--filter", &filter]).stdout.trim().to_string();
        (!id.is_empty()).then_some(id)
    });
    let container = Container::adopt(Engine::Docker, &task);
    // On a timeout, say what the container last saw and what the agent did (this has failed
    // now and then under load, cause not yet known).
    let started = std::time::Instant::now();
    let read = loop {
        let run = container.exec(&["cat", "/run/secrets/db"]);
        if run.status.success() {
            break run.stdout;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for the swarm task to read its secret: {run:?}\nagent log:\n{}",
            fx.agent.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(read, db);
    fx.expect_entry(&["--task", &task[..12]], &[("op", "open"), ("secret", "db"), ("service", "api")]);
    // A plain container claiming to be that swarm task: the swarm's record names another container.
    let task_id =
        docker::docker(&["inspect", "--format", "{{index .Config.Labels \"com.docker.swarm.task.id\"}}", &task])
            .ok()
            .trim()
            .to_string();
    let forged_label = format!("com.docker.swarm.task.id={task_id}");
    let mut forged: Vec<&str> = vec!["--label", &forged_label];
    let docker_flags = fx.mounts("api", "docker");
    forged.extend(docker_flags.iter().map(String::as_str));
    forged.extend([fx.image.as_str(), "cat", "/run/secrets/db"]);
    let run = docker_run(&forged);
    assert!(!run.status.success() && run.stderr.contains("Permission denied"), "{run:?}");
    fx.expect_entry(&["--service", "api"], &[("op", "denied"), ("reason", "SwarmTaskMismatch")]);
}

/// A Podman container of a service reads its secret; the audit names it.
#[test]
fn podman_containers_are_tasks_too() {
    let image = docker::podman_image();
    let podman = PodmanService::start();
    let fx = Fixture::new(&["--podman-socket", podman.socket.to_str().expect("utf-8")]);
    let value = marker("podman");
    fx.secret("db", &value);
    fx.service("pod", &["--secret", "db"]);
    let name = unique("podman");
    let flags = fx.mounts("pod", "docker");
    let mut args = vec!["run", "--rm", "--network", "none", "--name", &name];
    args.extend(PODMAN_ULIMITS);
    args.extend(flags.iter().map(String::as_str));
    args.extend([image.as_str(), "cat", "/run/secrets/db"]);
    let run = docker::podman(&args);
    assert_eq!(run.ok(), value);
    fx.expect_entry(&["--container", &name], &[("op", "open"), ("secret", "db"), ("service", "pod")]);
    wait_for("task_end of the podman container", || {
        has_entry(&fx.audit(&["--container", &name]), &[("op", "task_end")]).then_some(())
    });

    // `hush podman run`, in a user namespace: root inside is host uid 100000; the audit records
    // the uid the container sees (through its uid_map).
    let mapped = unique("userns");
    let mut args = vec!["podman", "run", "--service", "pod", "--rm", "--network", "none", "--name", &mapped];
    args.extend(PODMAN_ULIMITS);
    args.extend(["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"]);
    args.extend([image.as_str(), "sh", "-c", "cat /run/secrets/db; echo; id -u"]);
    let run = fx.hush(&args);
    assert_eq!(run.ok(), format!("{value}\n0\n"));
    fx.expect_entry(&["--container", &mapped], &[("op", "open"), ("uid", "0"), ("gid", "0")]);
}

/// A service removed while its container runs: the container's files disappear, and the agent
/// says why.
#[test]
fn removing_a_service_takes_its_files_from_running_containers() {
    let fx = Fixture::new(&[]);
    let value = marker("gone");
    fx.secret("db", &value);
    fx.service("gone", &["--secret", "db"]);
    let flags = fx.mounts("gone", "docker");
    let mut args: Vec<&str> = vec!["--network", "none"];
    args.extend(flags.iter().map(String::as_str));
    args.extend([fx.image.as_str(), "sleep", "300"]);
    let container = Container::run_detached(Engine::Docker, &args);
    assert_eq!(container.exec(&["cat", "/run/secrets/db"]).ok(), value);
    fx.vault.hush(&["service", "rm", "gone"]).ok();
    wait_for("the file gone from the running container", || {
        (!container.exec(&["cat", "/run/secrets/db"]).status.success()).then_some(())
    });
    wait_for("the agent saying why", || {
        fx.agent.log_text().contains("service no longer runs on this node").then_some(())
    });
    assert!(!fx.service_dir("gone").exists());
    // A new container for it: `hush docker run` says what is wrong before Docker does.
    fx.hush(&["docker", "run", "--service", "gone", "--rm", &fx.image, "true"]).fails_with("service gone not found");
}

/// The README's "Docker" section, run as written (with the test image for `$IMAGE`, this
/// agent's mount root for `/run/hush`, any 25-character ID where it shows one).
#[test]
fn readme_docker_section_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let section = readme.split("\n## Docker\n").nth(1).expect("a Docker section").split("\n## ").next().unwrap_or("");
    let block = section.split("```console\n").nth(1).expect("a console block").split("```").next().unwrap_or("");
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => steps.push((command.to_string(), Vec::new())),
            None => steps.last_mut().expect("output follows a command").1.push(line.to_string()),
        }
    }
    assert!(steps.len() >= 6, "the Docker section lost its example");
    let fx = Fixture::new(&[]);
    let root = fx.agent.mount_root();
    let hush_dir = bin("hush").parent().expect("bin dir").to_path_buf();
    let path = format!("{}:{}", hush_dir.display(), std::env::var("PATH").unwrap_or_default());
    let is_id = |l: &str| l.len() == 25 && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    for (command, expected) in steps.iter().filter(|(c, _)| !c.starts_with("export IMAGE=")) {
        let expected: Vec<String> =
            expected.iter().map(|l| l.replace("/run/hush", &root.display().to_string())).collect();
        let started = Instant::now();
        loop {
            let run = Run::from_command(
                Command::new("sh")
                    .args(["-c", command])
                    .env("PATH", &path)
                    .env("HUSH_VAULT", &fx.vault.addr)
                    .env("HUSH_TLS_DIR", fx.vault.admin_dir())
                    .env("HUSH_AGENT_SOCKET", fx.agent.socket())
                    .env("HUSH_MOUNT_ROOT", &root)
                    .env("IMAGE", &fx.image),
            );
            let printed: Vec<String> = format!("{}{}", run.stdout, run.stderr).lines().map(String::from).collect();
            let same = printed.len() == expected.len()
                && printed.iter().zip(&expected).all(|(got, want)| got == want || (is_id(got) && is_id(want)));
            if same {
                break;
            }
            // Audit entries arrive a few milliseconds after the read.
            assert!(
                command.starts_with("hush audit") && started.elapsed() < DEADLINE,
                "README step `{command}` printed {printed:?}, expected {expected:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
