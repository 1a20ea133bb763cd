//! Containers reading Hush: `hush service mounts` (the `docker run` / `docker service create`
//! flags for a service), `hush docker run` and `hush podman run`.
//!
//! A service's files are served by the local agent at `MOUNT_ROOT/services/NAME/`: the secrets
//! directory at `run/secrets` (one bind to `/run/secrets`), every other file at `root/<target>`
//! (one bind each). The container carries `io.hush.service=NAME`; the agent checks both on
//! every open.

use super::{Connection, call_error};
use crate::client::connect_admin;
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hush_proto::v1 as pb;
use serde_json::json;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The label naming the service a container is a task of.
pub const SERVICE_LABEL: &str = "io.hush.service";
/// Where secrets appear in a container.
const SECRETS_DIR: &str = "/run/secrets";

/// Where the local agent mounts its filesystem.
#[derive(Debug, Clone, Args)]
pub struct MountRoot {
    /// The agent's --mount-root
    #[arg(long, env = "HUSH_MOUNT_ROOT", default_value = "/run/hush", global = true)]
    pub mount_root: PathBuf,
}

/// One read-only bind from the service directory into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: String,
}

/// The service's directory under the agent's mount root.
pub fn service_dir(mount_root: &Path, service: &str) -> PathBuf {
    mount_root.join("services").join(service)
}

/// The binds a container of `service` needs, given the absolute targets of its files: the
/// secrets directory if any file lands under `/run/secrets`, then each other file.
pub fn binds(mount_root: &Path, service: &str, targets: &[String]) -> Vec<Bind> {
    let dir = service_dir(mount_root, service);
    let secrets_prefix = format!("{SECRETS_DIR}/");
    let mut binds = Vec::new();
    if targets.iter().any(|t| t.starts_with(&secrets_prefix)) {
        binds.push(Bind { source: dir.join("run/secrets"), target: SECRETS_DIR.to_string() });
    }
    let mut others: Vec<&String> = targets.iter().filter(|t| !t.starts_with(&secrets_prefix)).collect();
    others.sort();
    for target in others {
        binds.push(Bind { source: dir.join("root").join(target.trim_start_matches('/')), target: target.clone() });
    }
    binds
}

/// Which command-line shape the flags are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MountsFormat {
    /// `docker run` / `podman run` flags
    Docker,
    /// `docker service create` flags
    Swarm,
    /// the binds and the label as JSON
    Json,
}

/// The flags as separate arguments (for `hush docker run`), or refused if a path cannot be
/// written in a `--mount` flag.
pub fn mount_flags(service: &str, binds: &[Bind], format: MountsFormat) -> anyhow::Result<Vec<String>> {
    let mut flags = Vec::new();
    for bind in binds {
        let source = bind.source.to_str().context("the mount root is not UTF-8")?;
        for path in [source, bind.target.as_str()] {
            if path.contains([',', '"', '\'']) || path.chars().any(char::is_whitespace) {
                bail!("{path:?} cannot be written in a --mount flag (comma, quote or blank): use --format json");
            }
        }
        flags.push("--mount".to_string());
        flags.push(format!("type=bind,source={source},target={},readonly", bind.target));
    }
    flags.push(if format == MountsFormat::Swarm { "--container-label" } else { "--label" }.to_string());
    flags.push(format!("{SERVICE_LABEL}={service}"));
    Ok(flags)
}

/// The absolute targets of a service's files, from the vault.
async fn targets_of(connection: &Connection, service: &str) -> anyhow::Result<(String, Vec<String>)> {
    let mut client = connect_admin(&connection.target()).await?;
    let request = pb::ServiceInspectRequest { reference: service.to_string() };
    let spec = client.service_inspect(request).await.map_err(call_error)?.into_inner().service.unwrap_or_default();
    let targets = spec
        .secrets
        .iter()
        .chain(&spec.configs)
        .map(|r| if r.target.starts_with('/') { r.target.clone() } else { format!("{SECRETS_DIR}/{}", r.target) })
        .collect();
    Ok((spec.name, targets))
}

#[derive(Debug, Args)]
pub struct MountsArgs {
    /// Service name or ID
    #[arg(value_name = "NAME|ID")]
    service: String,
    #[arg(long, value_enum, default_value_t = MountsFormat::Docker)]
    format: MountsFormat,
    #[command(flatten)]
    root: MountRoot,
}

/// `hush service mounts NAME`: one line, unquoted, for `docker run $(hush service mounts web) IMAGE`.
pub async fn mounts(connection: &Connection, args: MountsArgs) -> anyhow::Result<ExitCode> {
    let (name, targets) = targets_of(connection, &args.service).await?;
    let binds = binds(&args.root.mount_root, &name, &targets);
    if args.format == MountsFormat::Json {
        let mounts: Vec<_> = binds
            .iter()
            .map(|b| json!({"Type": "bind", "Source": b.source.display().to_string(), "Target": b.target, "ReadOnly": true}))
            .collect();
        super::output::print_json(&json!({"Service": name, "Mounts": mounts, "Labels": {SERVICE_LABEL: name}}))?;
    } else {
        println!("{}", mount_flags(&name, &binds, args.format)?.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `hush docker run` waits for the agent to serve a service created a moment ago (its
/// assignment reaches the agent asynchronously).
const SERVED_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until the local agent serves `service` or `deadline` passes (then: why not). A service
/// created just before, as in the README, is usually on the node a few milliseconds later.
pub fn wait_served(mount_root: &Path, service: &str, deadline: Instant) -> anyhow::Result<()> {
    loop {
        match check_served(mount_root, service) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Why a container of `service` could not read its files here, if that can be told beforehand.
fn check_served(mount_root: &Path, service: &str) -> anyhow::Result<()> {
    let services = mount_root.join("services");
    if !services.is_dir() {
        bail!(
            "no Hush agent serves {} on this host ({} is missing): start hush-agent (or pass --mount-root where it mounts)",
            mount_root.display(),
            services.display()
        );
    }
    let dir = service_dir(mount_root, service);
    if !dir.is_dir() {
        bail!(
            "the agent does not serve service {service:?} on this node ({} is missing): check `hush service ls` and that the service may run on this node",
            dir.display()
        );
    }
    Ok(())
}

/// Container engines `hush docker run` can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    Docker,
    Podman,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The Hush service the container is a task of
    #[arg(long)]
    service: String,
    /// Which engine runs the container
    #[arg(long, value_enum, default_value_t = Runtime::Docker)]
    runtime: Runtime,
    #[command(flatten)]
    root: MountRoot,
    /// `docker run` arguments: options, IMAGE, then the command
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1.., value_name = "RUN ARGS")]
    args: Vec<OsString>,
}

/// `hush docker run --service NAME ARGS...`: `docker run` with the service's binds and label.
pub async fn run(connection: &Connection, args: RunArgs, runtime: Option<Runtime>) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let (name, targets) = targets_of(connection, &args.service).await?;
    wait_served(&args.root.mount_root, &name, Instant::now() + SERVED_TIMEOUT)?;
    let flags = mount_flags(&name, &binds(&args.root.mount_root, &name, &targets), MountsFormat::Docker)?;
    let program = match runtime.unwrap_or(args.runtime) {
        Runtime::Docker => "docker",
        Runtime::Podman => "podman",
    };
    let error = std::process::Command::new(program).arg("run").args(&flags).args(&args.args).exec();
    bail!("cannot run {program}: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bind_for_the_secrets_dir_and_one_per_other_file() {
        let targets = vec!["/run/secrets/db".to_string(), "/etc/app.conf".into(), "/run/secrets/sub/key".into()];
        let web = binds(Path::new("/run/hush"), "web", &targets);
        let flags = mount_flags("web", &web, MountsFormat::Docker).unwrap().join(" ");
        assert_eq!(
            flags,
            "--mount type=bind,source=/run/hush/services/web/run/secrets,target=/run/secrets,readonly \
             --mount type=bind,source=/run/hush/services/web/root/etc/app.conf,target=/etc/app.conf,readonly \
             --label io.hush.service=web"
        );
        let swarm = mount_flags("web", &web[..1], MountsFormat::Swarm).unwrap();
        assert_eq!(swarm[2..], ["--container-label".to_string(), "io.hush.service=web".into()]);
        // No secrets: no secrets bind.
        assert_eq!(binds(Path::new("/m"), "c", &["/x".into()]).len(), 1);
        let odd = binds(Path::new("/my mounts"), "c", &["/x".into()]);
        assert!(mount_flags("c", &odd, MountsFormat::Docker).unwrap_err().to_string().contains("--format json"));
    }
}
