//! `hush secret ...` and `hush config ...`: one implementation, two kinds.

use super::output::{Format, Listing, ago, print_json, print_listing};
use super::{Connection, call_error, input::read_value};
use crate::client::connect_admin;
use crate::model::Kind;
use crate::template::{self, Format as TemplateFormat, Template};
use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use hush_proto::v1 as pb;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
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
        /// Name: 1 to 64 of [a-zA-Z0-9-_.], unique regardless of case
        name: String,
        /// File to read, or - for standard input
        file: String,
    },
    /// List, sorted by name (naturally: item2 before item10)
    #[command(alias = "list")]
    Ls {
        /// Only IDs
        #[arg(short, long)]
        quiet: bool,
        /// name=PREFIX, names=NAME, id=PREFIX, label=KEY or label=KEY=VALUE (repeatable)
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        /// table, json, or a Go template: '{{.Name}}', 'table {{.ID}}\t{{.Name}}', '{{json .}}'
        #[arg(long, default_value = "table", value_name = "FORMAT")]
        format: String,
    },
    /// Show metadata and versions (for configs also the data; never a secret's value)
    Inspect {
        /// Full ID, name (any case) or unique ID prefix
        #[arg(required = true, value_name = "NAME|ID")]
        references: Vec<String>,
        /// Human-readable instead of JSON
        #[arg(long, conflicts_with = "format")]
        pretty: bool,
        /// A Go template run on each object's JSON: '{{.Version.Index}}', '{{json .Spec}}'
        #[arg(short, long, value_name = "TEMPLATE")]
        format: Option<String>,
    },
    /// Remove with all versions
    #[command(alias = "remove")]
    Rm {
        /// Full ID, name (any case) or unique ID prefix
        #[arg(required = true, value_name = "NAME|ID")]
        references: Vec<String>,
    },
    /// Create or rotate from Kubernetes manifests (secret: `kind: Secret`, config: `kind: ConfigMap`,
    /// also in `kind: List`), one object per key; all or nothing, unchanged values left alone
    Import {
        /// Manifest file (several documents allowed), or - for standard input
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: String,
        /// Go template naming each object from the manifest's .Name, .Key and .Namespace
        #[arg(long, default_value = crate::k8s::DEFAULT_NAME_TEMPLATE, value_name = "TEMPLATE")]
        name_template: String,
    },
    /// Print configs as Kubernetes ConfigMap manifests (a secret's value never leaves the vault)
    Export {
        /// Full ID, name (any case) or unique ID prefix
        #[arg(required = true, value_name = "NAME|ID")]
        references: Vec<String>,
        /// Output format (Kubernetes manifests)
        #[arg(long, default_value = "k8s", value_parser = ["k8s"])]
        format: String,
    },
    /// Store a new version; running tasks switch to it
    Rotate {
        /// Full ID, name (any case) or unique ID prefix
        #[arg(value_name = "NAME|ID")]
        reference: String,
        /// File to read, or - for standard input
        file: String,
        /// Add a version only if the value differs from the current one (compared in the vault);
        /// without it every rotate adds a version
        #[arg(long)]
        if_changed: bool,
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
    let imported = match &args.command {
        ObjectCommand::Import { file, name_template } => Some(super::import::load(kind, file, name_template)?),
        ObjectCommand::Export { .. } if kind == Kind::Secret => {
            bail!("a secret's value never leaves the vault: only configs can be exported")
        }
        _ => None,
    };
    let mut client = connect_admin(&args.connection.target()).await?;
    match args.command {
        ObjectCommand::Import { .. } => {
            return super::import::import(&mut client, kind, imported.expect("loaded above")).await;
        }
        ObjectCommand::Export { references, .. } => return super::import::export(&mut client, kind, references).await,
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
        ObjectCommand::Rotate { reference, if_changed, .. } => {
            let data = value.expect("read above").expose_secret().to_vec();
            let request = pb::RotateRequest { kind: pb_kind(kind), reference, data, only_if_changed: if_changed };
            let response = client.rotate(request).await.map_err(call_error)?.into_inner();
            if !response.changed {
                eprintln!("{kind} unchanged: still version {}", response.version);
            }
            println!("{}", response.id);
        }
        ObjectCommand::Ls { quiet, filters, format } => {
            let format = TemplateFormat::parse(&format)?;
            let request = pb::ListRequest { kind: pb_kind(kind), filters: parse_filters(&filters)? };
            let objects = client.list(request).await.map_err(call_error)?.into_inner().objects;
            print_list(kind, &objects, quiet, format)?;
        }
        ObjectCommand::Inspect { references, pretty, format } => {
            let template = format.as_deref().map(Template::parse).transpose()?;
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
            print_inspected(kind, &found, failed, pretty, template.as_ref())?;
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

fn print_list(kind: Kind, objects: &[pb::ObjectMeta], quiet: bool, format: TemplateFormat) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let format = match format {
        TemplateFormat::Table => Format::Table,
        TemplateFormat::Json => Format::Json,
        TemplateFormat::Template(template) if !quiet => {
            let rows: Vec<_> = objects.iter().map(|o| template_row(kind, o, now)).collect();
            let text = template.render_lines(&template::header(LS_TITLES), &rows)?;
            let mut out = std::io::stdout().lock();
            return out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("writing output");
        }
        TemplateFormat::Template(_) => Format::Table,
    };
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

/// Column titles of `ls --format 'table ...'`, by field (Docker's, plus VERSION).
const LS_TITLES: &[(&str, &str)] = &[
    ("ID", "ID"),
    ("Name", "NAME"),
    ("Driver", "DRIVER"),
    ("Version", "VERSION"),
    ("CreatedAt", "CREATED"),
    ("UpdatedAt", "UPDATED"),
    ("Labels", "LABELS"),
];

/// What an `ls` template sees of one object: Docker's fields (times as "2 hours ago", labels as
/// `k=v,k=v`, `Label "KEY"`), plus `Version`.
fn template_row(kind: Kind, o: &pb::ObjectMeta, now: chrono::DateTime<chrono::Utc>) -> gotmpl::Value {
    let labels: BTreeMap<String, String> = o.labels.clone().into_iter().collect();
    let joined = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let mut fields = vec![
        ("ID", o.id.as_str().into()),
        ("Name", o.name.as_str().into()),
        ("Version", gotmpl::Value::Uint(o.version)),
        ("CreatedAt", ago(&o.created_at, now).into()),
        ("UpdatedAt", ago(&o.updated_at, now).into()),
        ("Labels", joined.into()),
    ];
    if kind == Kind::Secret {
        // Hush has no secret drivers; the field is there so Docker scripts that print it work.
        fields.push(("Driver", "".into()));
    }
    template::row(fields, &labels)
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

/// `inspect`: Docker's shape (ID, Version.Index, CreatedAt, UpdatedAt, Spec{Name, Labels, Data})
/// plus Hush's version history. `Version.Index` is the current version (Docker's is its store's
/// raft index; both only grow). A config's Data is base64, as Docker's.
fn inspect_json(kind: Kind, response: &pb::InspectResponse) -> Value {
    let meta = response.meta.clone().unwrap_or_default();
    let mut spec = json!({ "Name": meta.name, "Labels": meta.labels.iter().collect::<BTreeMap<_, _>>() });
    if kind == Kind::Config {
        spec["Data"] = json!(base64::engine::general_purpose::STANDARD.encode(&response.data));
    }
    json!({
        "ID": meta.id,
        "Version": { "Index": meta.version },
        "CreatedAt": meta.created_at,
        "UpdatedAt": meta.updated_at,
        "Spec": spec,
        "Versions": meta.versions.iter().map(|v| json!({"Version": v.version, "CreatedAt": v.created_at, "Size": v.size})).collect::<Vec<_>>(),
    })
}

/// As Docker's `inspect`: JSON prints `[]` when nothing was found; a template prints a line per
/// object (an empty line when none); `--pretty` prints nothing if any reference was missing.
fn print_inspected(
    kind: Kind,
    found: &[pb::InspectResponse],
    failed: bool,
    pretty: bool,
    template: Option<&Template>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if pretty {
        if !failed {
            print_pretty(&mut out, kind, found)?;
        }
    } else if let Some(template) = template {
        if found.is_empty() {
            writeln!(out)?;
        }
        for response in found {
            let text = template.render(&template::from_json(&inspect_json(kind, response)))?;
            writeln!(out, "{text}")?;
        }
    } else {
        drop(out);
        return Ok(print_json(&Value::Array(found.iter().map(|o| inspect_json(kind, o)).collect()))?);
    }
    Ok(out.flush()?)
}

fn print_pretty(out: &mut impl Write, kind: Kind, found: &[pb::InspectResponse]) -> std::io::Result<()> {
    for (i, response) in found.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        let meta = response.meta.clone().unwrap_or_default();
        writeln!(out, "ID:              {}", meta.id)?;
        writeln!(out, "Name:            {}", meta.name)?;
        if !meta.labels.is_empty() {
            writeln!(out, "Labels:")?;
            for (k, v) in meta.labels.iter().collect::<BTreeMap<_, _>>() {
                writeln!(out, " - {k}={v}")?;
            }
        }
        writeln!(out, "Version:         {}", meta.version)?;
        writeln!(out, "Created at:      {}", meta.created_at)?;
        writeln!(out, "Updated at:      {}", meta.updated_at)?;
        writeln!(out, "Versions:")?;
        for v in &meta.versions {
            writeln!(
                out,
                " - {}   {}   {} byte{}",
                v.version,
                v.created_at,
                v.size,
                if v.size == 1 { "" } else { "s" }
            )?;
        }
        if kind == Kind::Config {
            writeln!(out, "Data:")?;
            writeln!(out, "{}", String::from_utf8_lossy(&response.data))?;
        }
    }
    Ok(())
}
