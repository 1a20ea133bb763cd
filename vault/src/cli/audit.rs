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
    /// Task ID or ID prefix (a container task's container ID prefix too)
    #[arg(long)]
    task: Option<String>,
    /// Container name, or container ID prefix
    #[arg(long)]
    container: Option<String>,
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

/// `hush audit verify`'s exit status when the log could not be read (tampered is 1).
pub const VERIFY_UNREADABLE: u8 = 3;

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect_admin(&args.connection.target()).await?;
    if let Some(AuditCommand::Verify) = args.command {
        let report = client.audit_verify(pb::AuditVerifyRequest {}).await.map_err(call_error)?.into_inner();
        if !report.unreadable.is_empty() {
            // Not a verdict: the log may be intact. Its own exit status, so scripts can tell.
            eprintln!(
                "error: audit log not verified: it could not be read ({}); nothing was found tampered, try again",
                report.unreadable
            );
            return Ok(ExitCode::from(VERIFY_UNREADABLE));
        }
        if !report.ok {
            bail!("audit log tampered: {}", report.problem);
        }
        if report.chains > 0 {
            println!(
                "audit log intact: {} entries in {} chain{} (one per replica), hash chains and {} cross-link{} verified",
                report.entries,
                report.chains,
                if report.chains == 1 { "" } else { "s" },
                report.links,
                if report.links == 1 { "" } else { "s" }
            );
            return Ok(ExitCode::SUCCESS);
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
        container: f.container.unwrap_or_default(),
        since: f.since.as_deref().map(parse_time).transpose()?.unwrap_or_default(),
        until: f.until.as_deref().map(parse_time).transpose()?.unwrap_or_default(),
        follow: f.follow,
    };
    let mut lines = client.audit_query(request).await.map_err(call_error)?.into_inner();
    if f.follow {
        // Streaming: JSON lines, or one table row per entry as it comes.
        let mut out = std::io::stdout().lock();
        let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
        if f.format == Format::Table {
            writeln!(out, "{}", fixed_columns(&header))?;
        }
        while let Some(line) = lines.message().await.map_err(call_error)? {
            match f.format {
                Format::Json => writeln!(out, "{}", line.json)?,
                Format::Table => writeln!(out, "{}", fixed_columns(&row(&serde_json::from_str(&line.json)?)))?,
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
        Format::Table => {
            // The log holds entries in arrival order: a task's reads, shipped by its agent, can
            // arrive after the vault recorded the task's end. People read a table by time.
            let time = |e: &Value| {
                e.get("time").and_then(Value::as_str).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            };
            entries.sort_by_key(time);
            print_table(&HEADER, &entries.iter().map(row).collect::<Vec<_>>())?
        }
    }
    Ok(ExitCode::SUCCESS)
}

const HEADER: [&str; 11] =
    ["TIME", "OP", "ACTOR", "OBJECT", "VERSION", "SERVICE", "TASK", "PID", "COUNT", "FIRST - LAST", "COMMAND"];

/// Column widths of `--follow` tables, which cannot wait for every row to size their columns:
/// wide enough for a time, the longest op, a node actor, a task ID as shown; a longer cell
/// pushes the rest of its row only.
const FOLLOW_WIDTHS: [usize; 10] = [19, 17, 30, 28, 7, 16, 12, 7, 5, 27];

/// One `--follow` row: cells padded to [`FOLLOW_WIDTHS`], three spaces apart, no trailing blanks.
fn fixed_columns(cells: &[String]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        line.push_str(cell);
        if let Some(width) = FOLLOW_WIDTHS.get(i) {
            line.push_str(&" ".repeat(width.saturating_sub(cell.chars().count()) + 3));
        }
    }
    line.trim_end().to_string()
}

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
    [
        time.get(..19).unwrap_or(&time).replace('T', " "),
        text("op"),
        text("actor"),
        object,
        text("version"),
        text("service"),
        task.get(..12).unwrap_or(&task).to_string(),
        text("pid"),
        // Identical accesses folded into the entry (or events dropped).
        text("count"),
        accesses(entry),
        text("command"),
    ]
    .iter()
    .map(|cell| printable(cell))
    .collect()
}

/// When a node's access happened (its clock, bounded by the vault): the time of day of the
/// first and, for a fold, of the last, to the millisecond (`10:00:00.120 - 10:00:00.915`).
fn accesses(entry: &Value) -> String {
    let time_of_day = |key: &str| {
        let time = entry.get(key).and_then(Value::as_str)?;
        let time = chrono::DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&chrono::Utc);
        Some(time.format("%H:%M:%S%.3f").to_string())
    };
    match (time_of_day("first_time"), time_of_day("last_time")) {
        (Some(first), Some(last)) => format!("{first} - {last}"),
        (Some(first), None) => first,
        _ => String::new(),
    }
}

/// `text` with control characters (C0, DEL, C1), bidirectional overrides and backslashes
/// shown escaped (`\n`, `\u{1b}`, `\\`): a task names its own command, and a cell must stay
/// one cell of one row whatever it named it.
fn printable(text: &str) -> String {
    let bidi =
        |c: char| matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || bidi(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_in_cells() {
        assert_eq!(printable("cat"), "cat");
        assert_eq!(printable("x\n2026\u{1b}[2K\u{202e}\\"), "x\\n2026\\u{1b}[2K\\u{202e}\\\\");
        let entry = serde_json::json!({"op": "read", "command": "\"}\n{\u{1b}[31m", "service": "a\rb"});
        let cells = row(&entry);
        assert!(cells.iter().all(|c| !c.chars().any(char::is_control)), "{cells:?}");
        assert!(cells.iter().any(|c| c == "\"}\\n{\\u{1b}[31m"), "{cells:?}");
    }

    #[test]
    fn follow_rows_line_up_with_their_header() {
        let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
        let entry = serde_json::json!({"time": "2026-12-01T10:00:00.123456Z", "op": "read", "actor": "node:1hgizbsympjrnmocu4x72hhnh",
            "secret": "db_password", "version": 2, "service": "web", "task": "2mdhpbkc3epwxyz", "pid": 32651, "count": 3, "command": "cat",
            "first_time": "2026-12-01T09:59:59.120001Z", "last_time": "2026-12-01T09:59:59.915Z"});
        let short = serde_json::json!({"time": "2026-12-01T10:00:01Z", "op": "create", "actor": "admin:admin", "secret": "x", "version": 1});
        let (header, full, short) = (fixed_columns(&header), fixed_columns(&row(&entry)), fixed_columns(&row(&short)));
        assert!(full.contains("   09:59:59.120 - 09:59:59.915   cat"), "{full}");
        for column in ["OP", "ACTOR", "OBJECT", "VERSION", "SERVICE", "TASK", "PID", "COUNT", "FIRST - LAST", "COMMAND"]
        {
            let at = header.find(column).unwrap();
            assert_eq!(full.as_bytes()[at - 1], b' ', "{column}: {full}");
            assert_ne!(full.as_bytes()[at], b' ', "{column}: {full}");
        }
        assert_eq!(full.find("cat"), header.find("COMMAND"));
        assert!(short[header.find("VERSION").unwrap()..].starts_with("1"), "{short}");
        assert_eq!(short.find("secret/x"), header.find("OBJECT"));
        assert!(!short.ends_with(' '));
    }
}
