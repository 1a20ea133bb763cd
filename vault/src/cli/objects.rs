//! `hush secret ...` and `hush config ...`: one implementation, two kinds.

use super::output::{Format, Listing, ago, print_json, print_listing};
use super::{Connection, call_error, input::read_value};
use crate::client::connect_admin;
use crate::model::Kind;
use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use hush_proto::v1 as pb;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ObjectArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: ObjectCommand,
}

#[derive(Debug, Subcommand)]
enum ObjectCommand {
    /// Create from a file or standard input (-); prints the new ID
    Create {
        /// Label KEY=VALUE (repeatable)
        #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        name: String,
        /// File to read, or - for standard input
        file: String,
    },
    /// List, sorted by name
    #[command(alias = "list")]
    Ls {
        /// Only IDs
        #[arg(short, long)]
        quiet: bool,
        /// name=PREFIX, id=PREFIX, label=KEY or label=KEY=VALUE (repeatable)
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show metadata (for configs also the data; never a secret's value)
    Inspect {
        #[arg(required = true, value_name = "NAME|ID")]
        references: Vec<String>,
        /// Human-readable instead of JSON
        #[arg(long)]
        pretty: bool,
    },
    /// Remove with all versions
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "NAME|ID")]
        references: Vec<String>,
    },
    /// Store a new version; running tasks switch to it
    Rotate {
        #[arg(value_name = "NAME|ID")]
        reference: String,
        /// File to read, or - for standard input
        file: String,
    },
}

fn pb_kind(kind: Kind) -> i32 {
    match kind {
        Kind::Secret => pb::Kind::Secret as i32,
        Kind::Config => pb::Kind::Config as i32,
    }
}

fn parse_labels(labels: &[String]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect()
}

fn parse_filters(filters: &[String]) -> anyhow::Result<Vec<pb::Filter>> {
    filters
        .iter()
        .map(|f| match f.split_once('=') {
            Some((key, value)) => Ok(pb::Filter { key: key.to_string(), value: value.to_string() }),
            None => bail!("invalid filter {f:?}: expected KEY=VALUE"),
        })
        .collect()
}

pub async fn run(kind: Kind, args: ObjectArgs) -> anyhow::Result<ExitCode> {
    // Read input before connecting, so a bad file fails without touching the vault.
    let value = match &args.command {
        ObjectCommand::Create { file, .. } | ObjectCommand::Rotate { file, .. } => Some(read_value(kind, file)?),
        _ => None,
    };
    let mut client = connect_admin(&args.connection.target()).await?;
    match args.command {
        ObjectCommand::Create { labels, name, .. } => {
            let data = value.expect("read above").expose_secret().to_vec();
            let request = pb::CreateRequest {
                kind: pb_kind(kind),
                name,
                labels: parse_labels(&labels).into_iter().collect(),
                data,
            };
            let response = client.create(request).await.map_err(call_error)?.into_inner();
            println!("{}", response.id);
        }
        ObjectCommand::Rotate { reference, .. } => {
            let data = value.expect("read above").expose_secret().to_vec();
            let request = pb::RotateRequest { kind: pb_kind(kind), reference, data, only_if_changed: false };
            let response = client.rotate(request).await.map_err(call_error)?.into_inner();
            println!("{}", response.id);
        }
        ObjectCommand::Ls { quiet, filters, format } => {
            let request = pb::ListRequest { kind: pb_kind(kind), filters: parse_filters(&filters)? };
            let objects = client.list(request).await.map_err(call_error)?.into_inner().objects;
            print_list(&objects, quiet, format)?;
        }
        ObjectCommand::Inspect { references, pretty } => {
            let mut found = Vec::new();
            let mut failed = false;
            for reference in references {
                match client.inspect(pb::InspectRequest { kind: pb_kind(kind), reference }).await {
                    Ok(response) => found.push(response.into_inner()),
                    Err(status) => {
                        eprintln!("error: {}", call_error(status));
                        failed = true;
                    }
                }
            }
            if pretty {
                print_pretty(kind, &found);
            } else if !found.is_empty() || !failed {
                print_json(&Value::Array(found.iter().map(|o| inspect_json(kind, o)).collect()))?;
            }
            return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
        }
        ObjectCommand::Rm { references } => {
            let client = &client;
            return Ok(super::remove_each(references, |reference| {
                let mut client = client.clone();
                async move { client.remove(pb::RemoveRequest { kind: pb_kind(kind), reference }).await.map(drop) }
            })
            .await);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(objects: &[pb::ObjectMeta], quiet: bool, format: Format) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let row = |o: &pb::ObjectMeta| {
        vec![o.id.clone(), o.name.clone(), o.version.to_string(), ago(&o.created_at, now), ago(&o.updated_at, now)]
    };
    let listing = Listing {
        id: |o: &pb::ObjectMeta| &o.id,
        json: &list_json,
        header: &["ID", "NAME", "VERSION", "CREATED", "UPDATED"],
        row: &row,
    };
    print_listing(objects, quiet, format, &listing).context("writing output")
}

/// `ls --format json`: one object per row, keys stable.
fn list_json(o: &pb::ObjectMeta) -> Value {
    json!({
        "ID": o.id,
        "Name": o.name,
        "Version": o.version,
        "CreatedAt": o.created_at,
        "UpdatedAt": o.updated_at,
        "Labels": o.labels.iter().collect::<BTreeMap<_, _>>(),
    })
}

/// `inspect`: Docker's shape (ID, Version, CreatedAt, UpdatedAt, Spec{Name, Labels, Data}) plus
/// the version history. A config's Data is base64, as Docker's.
fn inspect_json(kind: Kind, response: &pb::InspectResponse) -> Value {
    let meta = response.meta.clone().unwrap_or_default();
    let mut spec = json!({ "Name": meta.name, "Labels": meta.labels.iter().collect::<BTreeMap<_, _>>() });
    if kind == Kind::Config {
        spec["Data"] = json!(base64::engine::general_purpose::STANDARD.encode(&response.data));
    }
    json!({
        "ID": meta.id,
        "Version": meta.version,
        "CreatedAt": meta.created_at,
        "UpdatedAt": meta.updated_at,
        "Spec": spec,
        "Versions": meta.versions.iter().map(|v| json!({"Version": v.version, "CreatedAt": v.created_at, "Size": v.size})).collect::<Vec<_>>(),
    })
}

fn print_pretty(kind: Kind, found: &[pb::InspectResponse]) {
    for (i, response) in found.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let meta = response.meta.clone().unwrap_or_default();
        println!("ID:              {}", meta.id);
        println!("Name:            {}", meta.name);
        if !meta.labels.is_empty() {
            println!("Labels:");
            for (k, v) in meta.labels.iter().collect::<BTreeMap<_, _>>() {
                println!(" - {k}={v}");
            }
        }
        println!("Version:         {}", meta.version);
        println!("Created at:      {}", meta.created_at);
        println!("Updated at:      {}", meta.updated_at);
        if kind == Kind::Config {
            println!("Data:");
            println!("{}", String::from_utf8_lossy(&response.data));
        }
    }
}
