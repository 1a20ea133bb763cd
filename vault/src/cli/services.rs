//! `hush service create|ls|inspect|rm|update`.

use super::output::{ListFlags, Listing, ago, print_json, print_listing};
use super::{Connection, call_error};
use crate::client::connect_admin;
use clap::{Args, Subcommand};
use hush_proto::v1 as pb;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: ServiceCommand,
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Create a service: which secrets and configs its tasks get, and where
    Create {
        /// Service name: 1 to 64 of [a-zA-Z0-9-_.]
        name: String,
        /// NAME or source=NAME,target=PATH,uid=N,gid=N,mode=0NNN (repeatable)
        #[arg(long = "secret", value_name = "SPEC")]
        secrets: Vec<String>,
        /// NAME or source=NAME,target=/PATH,uid=N,gid=N,mode=0NNN (repeatable)
        #[arg(long = "config", value_name = "SPEC")]
        configs: Vec<String>,
        /// Placement constraint, e.g. node.labels.role==db (repeatable; all must hold)
        #[arg(long = "constraint", value_name = "EXPR")]
        constraints: Vec<String>,
    },
    /// List services
    #[command(alias = "list")]
    Ls(ListFlags),
    /// Show services as JSON
    Inspect {
        /// Full ID, name or unique ID prefix
        #[arg(required = true, value_name = "NAME|ID")]
        references: Vec<String>,
    },
    /// Remove services (their running tasks lose their files)
    #[command(alias = "remove")]
    Rm {
        /// Full ID, name or unique ID prefix
        #[arg(required = true, value_name = "NAME|ID")]
        references: Vec<String>,
    },
    /// The `docker run` (or `docker service create`) flags binding the service's files: one line
    Mounts(super::docker::MountsArgs),
    /// Add or remove references; running tasks follow live
    Update {
        /// Full ID, name or unique ID prefix
        #[arg(value_name = "NAME|ID")]
        reference: String,
        #[arg(long = "secret-add", value_name = "SPEC")]
        secret_add: Vec<String>,
        #[arg(long = "secret-rm", value_name = "NAME")]
        secret_rm: Vec<String>,
        #[arg(long = "config-add", value_name = "SPEC")]
        config_add: Vec<String>,
        #[arg(long = "config-rm", value_name = "NAME")]
        config_rm: Vec<String>,
        /// Add a placement constraint; tasks on nodes it excludes end
        #[arg(long = "constraint-add", value_name = "EXPR")]
        constraint_add: Vec<String>,
        /// Remove a placement constraint
        #[arg(long = "constraint-rm", value_name = "EXPR")]
        constraint_rm: Vec<String>,
    },
}

fn reference_json(r: &pb::FileReference) -> Value {
    json!({"Source": r.source, "ID": r.object_id, "Target": r.target, "UID": r.uid, "GID": r.gid, "Mode": format!("{:04o}", r.mode)})
}

fn service_json(s: &pb::ServiceSpec) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "CreatedAt": s.created_at,
        "UpdatedAt": s.updated_at,
        "Secrets": s.secrets.iter().map(reference_json).collect::<Vec<_>>(),
        "Configs": s.configs.iter().map(reference_json).collect::<Vec<_>>(),
        "Placement": {"Constraints": s.constraints},
    })
}

pub async fn run(args: ServiceArgs) -> anyhow::Result<ExitCode> {
    if let ServiceCommand::Mounts(mounts) = args.command {
        return super::docker::mounts(&args.connection, mounts).await;
    }
    let mut client = connect_admin(&args.connection.target()).await?;
    match args.command {
        ServiceCommand::Mounts(_) => unreachable!("handled above"),
        ServiceCommand::Create { name, secrets, configs, constraints } => {
            let request = pb::ServiceCreateRequest { name, secrets, configs, labels: Default::default(), constraints };
            println!("{}", client.service_create(request).await.map_err(call_error)?.into_inner().id);
        }
        ServiceCommand::Ls(ListFlags { quiet, format }) => {
            let services =
                client.service_list(pb::ServiceListRequest {}).await.map_err(call_error)?.into_inner().services;
            let now = chrono::Utc::now();
            let row = |s: &pb::ServiceSpec| {
                let (secrets, configs) = (s.secrets.len().to_string(), s.configs.len().to_string());
                vec![s.id.clone(), s.name.clone(), secrets, configs, ago(&s.created_at, now)]
            };
            let header = ["ID", "NAME", "SECRETS", "CONFIGS", "CREATED"];
            let listing = Listing { id: |s: &pb::ServiceSpec| &s.id, json: &service_json, header: &header, row: &row };
            print_listing(&services, quiet, format, &listing)?;
        }
        ServiceCommand::Inspect { references } => {
            let mut found = Vec::new();
            let mut failed = false;
            for reference in references {
                match client.service_inspect(pb::ServiceInspectRequest { reference }).await {
                    Ok(r) => found.extend(r.into_inner().service.as_ref().map(service_json)),
                    Err(status) => {
                        eprintln!("error: {}", call_error(status));
                        failed = true;
                    }
                }
            }
            if !found.is_empty() || !failed {
                print_json(&Value::Array(found))?;
            }
            return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
        }
        ServiceCommand::Rm { references } => {
            let client = &client;
            return Ok(super::remove_each(references, |reference| {
                let mut client = client.clone();
                async move { client.service_remove(pb::ServiceRemoveRequest { reference }).await.map(drop) }
            })
            .await);
        }
        ServiceCommand::Update {
            reference,
            secret_add,
            secret_rm,
            config_add,
            config_rm,
            constraint_add,
            constraint_rm,
        } => {
            let request = pb::ServiceUpdateRequest {
                reference,
                secret_add,
                secret_rm,
                config_add,
                config_rm,
                constraint_add,
                constraint_rm,
                ..Default::default()
            };
            println!("{}", client.service_update(request).await.map_err(call_error)?.into_inner().id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
