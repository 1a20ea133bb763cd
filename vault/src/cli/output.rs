//! Output for people (aligned tables, relative times) and for machines (stable JSON).

use chrono::{DateTime, Utc};
use std::io::Write;
use tabwriter::TabWriter;

/// `--format`: `table` for people, `json` for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// `-q/--quiet` and `--format` of an `ls` without filters (nodes, join tokens, services).
#[derive(Debug, clap::Args)]
pub struct ListFlags {
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Writes rows as columns separated by at least three spaces, as Docker does (no trailing blanks).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut table = TabWriter::new(Vec::new()).padding(3);
    writeln!(table, "{}", header.join("\t"))?;
    for row in rows {
        writeln!(table, "{}", row.join("\t"))?;
    }
    let text = table.into_inner().map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    for line in String::from_utf8_lossy(&text).lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    out.flush()
}

/// How `ls` shows one kind of item.
pub struct Listing<'a, T> {
    pub id: fn(&T) -> &str,
    pub json: &'a dyn Fn(&T) -> serde_json::Value,
    pub header: &'a [&'a str],
    pub row: &'a dyn Fn(&T) -> Vec<String>,
}

/// `ls` output: IDs with `-q`, one JSON array with `--format json`, else an aligned table.
pub fn print_listing<T>(items: &[T], quiet: bool, format: Format, listing: &Listing<'_, T>) -> std::io::Result<()> {
    if quiet {
        let mut out = std::io::stdout().lock();
        for item in items {
            writeln!(out, "{}", (listing.id)(item))?;
        }
        return Ok(());
    }
    match format {
        Format::Json => print_json(&serde_json::Value::Array(items.iter().map(listing.json).collect())),
        Format::Table => print_table(listing.header, &items.iter().map(listing.row).collect::<Vec<_>>()),
    }
}

pub fn print_json(value: &serde_json::Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)
}

/// "3 minutes ago", worded as Docker's (go-units `HumanDuration`).
pub fn ago(when: &str, now: DateTime<Utc>) -> String {
    match DateTime::parse_from_rfc3339(when) {
        Ok(t) => format!("{} ago", human_duration((now - t.with_timezone(&Utc)).num_seconds().max(0))),
        Err(_) => when.to_string(),
    }
}

/// "in 23 hours", or "expired 3 minutes ago" once `when` has passed.
pub fn expiry(when: &str, now: DateTime<Utc>) -> String {
    match DateTime::parse_from_rfc3339(when) {
        Ok(t) => match (t.with_timezone(&Utc) - now).num_seconds() {
            left if left > 0 => format!("in {}", human_duration(left).to_lowercase()),
            past => format!("expired {} ago", human_duration(-past).to_lowercase()),
        },
        Err(_) => when.to_string(),
    }
}

fn human_duration(seconds: i64) -> String {
    let (minutes, hours) = (seconds / 60, seconds / 3600);
    match seconds {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_dockers() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(45), "45 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3 * 3600), "3 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(800 * 86400), "2 years");
    }
}
