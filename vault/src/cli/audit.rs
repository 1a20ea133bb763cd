//! `hush audit` (query, follow) and `hush audit verify`.

use super::output::{Format, print_json, print_table};
use super::{Connection, call_error};
use crate::client::connect_admin;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hush_proto::v1 as pb;
use serde_json::Value;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Option<AuditCommand>,
    #[command(flatten)]
    filters: Filters,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the log's hash chain end to end; names the first bad entry
    Verify,
}

#[derive(Debug, Args)]
struct Filters {
    #[arg(long)]
    secret: Option<String>,
    #[arg(long)]
    config: Option<String>,
    #[arg(long)]
    service: Option<String>,
    /// Node ID, ID prefix or name
    #[arg(long)]
    node: Option<String>,
    /// Task ID or ID prefix
    #[arg(long)]
    task: Option<String>,
    /// Entries since a duration ago (30m, 1h, 2days) or an RFC 3339 time
    #[arg(long, value_name = "DURATION|TIME")]
    since: Option<String>,
    /// Entries until a duration ago or an RFC 3339 time
    #[arg(long, value_name = "DURATION|TIME")]
    until: Option<String>,
    /// Keep printing new entries as they are written
    #[arg(short, long)]
    follow: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// `1h` → an hour ago; an RFC 3339 time as is.
fn parse_time(text: &str) -> anyhow::Result<String> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&chrono::Utc).to_rfc3339());
    }
    let duration = humantime::parse_duration(text)
        .with_context(|| format!("invalid time {text:?}: expected a duration (30m, 1h, 2days) or an RFC 3339 time"))?;
    let ago = chrono::Utc::now() - chrono::Duration::from_std(duration).context("duration too large")?;
    Ok(ago.to_rfc3339())
}

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect_admin(&args.connection.target()).await?;
    if let Some(AuditCommand::Verify) = args.command {
        let report = client.audit_verify(pb::AuditVerifyRequest {}).await.map_err(call_error)?.into_inner();
        if !report.ok {
            bail!("audit log tampered: {}", report.problem);
        }
        println!(
            "audit log intact: {} entries in {} file{}, hash chain verified",
            report.entries,
            report.files,
            if report.files == 1 { "" } else { "s" }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let f = args.filters;
    let request = pb::AuditQueryRequest {
        secret: f.secret.unwrap_or_default(),
        config: f.config.unwrap_or_default(),
        service: f.service.unwrap_or_default(),
        node: f.node.unwrap_or_default(),
        task: f.task.unwrap_or_default(),
        since: f.since.as_deref().map(parse_time).transpose()?.unwrap_or_default(),
        until: f.until.as_deref().map(parse_time).transpose()?.unwrap_or_default(),
        follow: f.follow,
    };
    let mut lines = client.audit_query(request).await.map_err(call_error)?.into_inner();
    if f.follow {
        // Streaming: JSON lines, or one table row per entry as it comes.
        let mut out = std::io::stdout().lock();
        if f.format == Format::Table {
            writeln!(out, "{}", HEADER.join("   "))?;
        }
        while let Some(line) = lines.message().await.map_err(call_error)? {
            match f.format {
                Format::Json => writeln!(out, "{}", line.json)?,
                Format::Table => writeln!(out, "{}", row(&serde_json::from_str(&line.json)?).join("   "))?,
            }
            out.flush()?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut entries = Vec::new();
    while let Some(line) = lines.message().await.map_err(call_error)? {
        entries.push(serde_json::from_str::<Value>(&line.json)?);
    }
    match f.format {
        Format::Json => print_json(&Value::Array(entries))?,
        Format::Table => print_table(&HEADER, &entries.iter().map(row).collect::<Vec<_>>())?,
    }
    Ok(ExitCode::SUCCESS)
}

const HEADER: [&str; 9] = ["TIME", "OP", "ACTOR", "OBJECT", "VERSION", "SERVICE", "TASK", "PID", "COMMAND"];

fn row(entry: &Value) -> Vec<String> {
    let text = |key: &str| {
        entry.get(key).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_default()
    };
    let object = match (entry.get("secret"), entry.get("config")) {
        (Some(name), _) => format!("secret/{}", name.as_str().unwrap_or_default()),
        (_, Some(name)) => format!("config/{}", name.as_str().unwrap_or_default()),
        _ => String::new(),
    };
    let time = text("time");
    let task = text("task");
    vec![
        time.get(..19).unwrap_or(&time).replace('T', " "),
        text("op"),
        text("actor"),
        object,
        text("version"),
        text("service"),
        task.get(..12).unwrap_or(&task).to_string(),
        text("pid"),
        text("command"),
    ]
}
