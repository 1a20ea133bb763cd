//! Compose files for Docker: `hush compose config --for docker` (the file with Hush's secrets
//! and configs turned into read-only binds of each service's directory and its label), and
//! `hush compose up|down` (deploy, then `docker compose` / `docker-compose` with that file).

use super::docker::{MountRoot, SERVICE_LABEL, binds};
use crate::compose::Loaded;
use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// The compose file version written when the input names none: long-syntax binds need 3.2, and
/// `docker stack deploy` of Docker 20.10 wants a version.
const VERSION: &str = "3.8";
/// How long `compose up` waits for the agent to serve a freshly deployed service's directory.
const SERVED_TIMEOUT: Duration = Duration::from_secs(15);

/// `tree` (the merged, interpolated files) as Docker should run it: top-level `secrets:`,
/// `configs:` and `name:` gone; each service's references replaced by binds from its service
/// directory, plus the label naming its Hush service.
pub fn docker_file(loaded: &Loaded, mut tree: Value, mount_root: &Path) -> anyhow::Result<Value> {
    // The tree is interpolated already; Docker interpolates again: keep every `$` literal.
    escape_dollars(&mut tree);
    let root = tree.as_object_mut().context("expected a mapping at the top level")?;
    for key in ["secrets", "configs", "name"] {
        root.remove(key);
    }
    if !root.contains_key("version") {
        let mut with_version = Map::new();
        with_version.insert("version".into(), json!(VERSION));
        with_version.append(root);
        *root = with_version;
    }
    let Some(services) = root.get_mut("services").and_then(Value::as_object_mut) else { return Ok(tree) };
    for (key, service) in services.iter_mut() {
        let Some(spec) = loaded.project.services.get(key) else { continue };
        let Some(service) = service.as_object_mut() else { continue };
        service.remove("secrets");
        service.remove("configs");
        let targets: Vec<String> =
            spec.secrets.iter().chain(&spec.configs).map(|r| r.reference.absolute_target()).collect();
        let new_binds = binds(mount_root, &spec.name, &targets);
        if !new_binds.is_empty() {
            let volumes = service.entry("volumes").or_insert_with(|| json!([]));
            let list = volumes.as_array_mut().with_context(|| format!("services.{key}.volumes: expected a list"))?;
            for bind in new_binds {
                list.push(json!({
                    "type": "bind",
                    "source": bind.source.display().to_string(),
                    "target": bind.target,
                    "read_only": true,
                }));
            }
        }
        match service.entry("labels").or_insert_with(|| json!({})) {
            Value::Object(labels) => {
                labels.insert(SERVICE_LABEL.into(), json!(spec.name));
            }
            Value::Array(labels) => labels.push(json!(format!("{SERVICE_LABEL}={}", spec.name))),
            _ => bail!("services.{key}.labels: expected a mapping or a list"),
        }
    }
    Ok(tree)
}

fn escape_dollars(value: &mut Value) {
    match value {
        Value::String(text) if text.contains('$') => *text = text.replace('$', "$$"),
        Value::Array(items) => items.iter_mut().for_each(escape_dollars),
        Value::Object(map) => map.values_mut().for_each(escape_dollars),
        _ => {}
    }
}

/// `docker compose` (v2) where the plugin exists, else `docker-compose` (v1).
fn compose_command() -> Command {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if v2 {
        let mut command = Command::new("docker");
        command.arg("compose");
        command
    } else {
        Command::new("docker-compose")
    }
}

/// Waits until the local agent serves every service of the project (a container created before
/// that would fail with Docker's `bind source path does not exist`).
fn wait_served(loaded: &Loaded, mount_root: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + SERVED_TIMEOUT;
    for spec in loaded.project.services.values() {
        super::docker::wait_served(mount_root, &spec.name, deadline)?;
    }
    Ok(())
}

/// Runs `docker compose -p PROJECT --project-directory DIR -f FILE ARGS` with the Docker file
/// written to a temporary file for the command's life; returns its exit status.
pub fn run_compose(
    loaded: &Loaded,
    tree: Value,
    root: &MountRoot,
    args: &[&str],
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let file = docker_file(loaded, tree, &root.mount_root)?;
    if wait {
        wait_served(loaded, &root.mount_root)?;
    }
    let mut temp = tempfile::Builder::new().prefix("hush-compose-").suffix(".yaml").tempfile()?;
    std::io::Write::write_all(&mut temp, serde_saphyr::to_string(&file)?.as_bytes())?;
    let mut command = compose_command();
    command
        .arg("-p")
        .arg(&loaded.project.name)
        .arg("--project-directory")
        .arg(&loaded.project.dir)
        .arg("-f")
        .arg(temp.path())
        .args(args);
    let status = command.status().context("cannot run docker compose or docker-compose: is Docker installed?")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(code.clamp(1, 255) as u8),
        None => ExitCode::FAILURE,
    })
}
