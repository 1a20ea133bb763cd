//! `hush compose deploy|config|ls|rm|up|down`: compose files deployed as `docker stack deploy`
//! would, with Hush's secrets, configs and services (see [`crate::compose`]); `up`/`down` also
//! run the containers with Docker (see [`super::compose_docker`]).

use super::output::{Format, print_json, print_table};
use super::{Connection, call_error};
use crate::client::connect_admin;
use crate::compose::{self, LoadOptions, deploy};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ComposeArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: ComposeCommand,
}

/// `-f` and `-p`, shared by `deploy` and `config`.
#[derive(Debug, Args)]
struct FileArgs {
    /// Compose file (repeatable: later files override earlier ones). Default: compose.yaml,
    /// compose.yml, docker-compose.yaml or docker-compose.yml, plus its .override file
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Project name. Default: the top-level `name:`, else the first file's directory name
    #[arg(short = 'p', long = "project-name", value_name = "PROJECT")]
    project: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ComposeCommand {
    /// Create or update the project's secrets, configs and services (all or nothing)
    Deploy(FileArgs),
    /// Print the resolved model (never a secret's value); with --for docker, the compose file
    /// Docker runs: references replaced by read-only binds of each service's directory
    Config {
        #[command(flatten)]
        files: FileArgs,
        /// yaml (default) or json
        #[arg(long, default_value = "yaml", value_parser = ["yaml", "json"])]
        format: String,
        /// Print the file for `docker compose`, `docker-compose` and `docker stack deploy`
        #[arg(long = "for", value_name = "ENGINE", value_parser = ["docker"])]
        for_engine: Option<String>,
        #[command(flatten)]
        root: super::docker::MountRoot,
    },
    /// Deploy, then run the project's containers with `docker compose up` (or `docker-compose`)
    Up {
        #[command(flatten)]
        files: FileArgs,
        /// Run the containers in the background
        #[arg(short = 'd', long)]
        detach: bool,
        #[command(flatten)]
        root: super::docker::MountRoot,
    },
    /// Stop and remove the project's containers (`docker compose down`); `rm` removes its Hush objects
    Down {
        #[command(flatten)]
        files: FileArgs,
        #[command(flatten)]
        root: super::docker::MountRoot,
    },
    /// List projects
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove projects: their services, then the secrets and configs they created
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "PROJECT")]
        projects: Vec<String>,
    },
}

/// Compose's default file names, in its order of preference.
const DEFAULT_FILES: &[(&str, &str)] = &[
    ("compose.yaml", "compose.override.yaml"),
    ("compose.yml", "compose.override.yml"),
    ("docker-compose.yaml", "docker-compose.override.yaml"),
    ("docker-compose.yml", "docker-compose.override.yml"),
];

fn load(args: &FileArgs) -> anyhow::Result<compose::Loaded> {
    let loaded = compose::load(&options(args)?, std::env::vars())?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(loaded)
}

/// The files (defaults found here when none is given) and project flag.
fn options(args: &FileArgs) -> anyhow::Result<LoadOptions> {
    let mut files = args.files.clone();
    if files.is_empty() {
        let (base, extra) = DEFAULT_FILES
            .iter()
            .find(|(base, _)| std::path::Path::new(base).is_file())
            .ok_or_else(|| anyhow::anyhow!("no compose file: pass -f FILE or create compose.yaml here"))?;
        files.push(base.into());
        if std::path::Path::new(extra).is_file() {
            files.push(extra.into());
        }
    }
    Ok(LoadOptions { files, project: args.project.clone() })
}

pub async fn run(args: ComposeArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ComposeCommand::Config { files, format, for_engine: Some(_), root } => {
            let loaded = load(&files)?;
            let tree = compose::load_tree(&options(&files)?, std::env::vars())?;
            let file = super::compose_docker::docker_file(&loaded, tree, &root.mount_root)?;
            if format == "json" {
                print_json(&file)?;
            } else {
                print!("{}", serde_saphyr::to_string(&file)?);
            }
        }
        ComposeCommand::Up { files, detach, root } => {
            let loaded = load(&files)?;
            let tree = compose::load_tree(&options(&files)?, std::env::vars())?;
            let mut client = connect_admin(&args.connection.target()).await?;
            for line in deploy::deploy(&mut client, &loaded).await? {
                println!("{line}");
            }
            let up: &[&str] = if detach { &["up", "-d"] } else { &["up"] };
            return super::compose_docker::run_compose(&loaded, tree, &root, up, true);
        }
        ComposeCommand::Down { files, root } => {
            let loaded = load(&files)?;
            let tree = compose::load_tree(&options(&files)?, std::env::vars())?;
            return super::compose_docker::run_compose(&loaded, tree, &root, &["down"], false);
        }
        ComposeCommand::Config { files, format, for_engine: None, root: _ } => {
            let model = load(&files)?.project.to_json();
            if format == "json" {
                print_json(&model)?;
            } else {
                print!("{}", serde_saphyr::to_string(&model)?);
            }
        }
        ComposeCommand::Deploy(files) => {
            // Everything offline is checked before connecting.
            let loaded = load(&files)?;
            let mut client = connect_admin(&args.connection.target()).await?;
            let report = deploy::deploy(&mut client, &loaded).await?;
            for line in &report {
                println!("{line}");
            }
            if report.is_empty() {
                println!("Project {} is up to date", loaded.project.name);
            }
        }
        ComposeCommand::Ls { format } => {
            let mut client = connect_admin(&args.connection.target()).await?;
            let inventory = deploy::Inventory::read(&mut client).await.map_err(call_error)?;
            let projects = inventory.projects();
            match format {
                Format::Json => print_json(&Value::Array(
                    projects
                        .iter()
                        .map(|(name, [services, secrets, configs])| {
                            json!({"Name": name, "Services": services, "Secrets": secrets, "Configs": configs})
                        })
                        .collect(),
                ))?,
                Format::Table => {
                    let rows: Vec<Vec<String>> = projects
                        .iter()
                        .map(|(name, counts)| {
                            std::iter::once(name.clone()).chain(counts.iter().map(usize::to_string)).collect()
                        })
                        .collect();
                    print_table(&["PROJECT", "SERVICES", "SECRETS", "CONFIGS"], &rows)?;
                }
            }
        }
        ComposeCommand::Rm { projects } => {
            let mut client = connect_admin(&args.connection.target()).await?;
            let mut failed = false;
            for project in projects {
                let (report, failures) = deploy::remove(&mut client, &project).await?;
                for line in &report {
                    println!("{line}");
                }
                for failure in &failures {
                    eprintln!("error: {failure}");
                }
                failed |= !failures.is_empty();
                if report.is_empty() && failures.is_empty() {
                    // As `docker stack rm` of an unknown stack: said, not an error.
                    eprintln!("Nothing found in project: {project}");
                }
            }
            return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
        }
    }
    Ok(ExitCode::SUCCESS)
}
