//! `hush vault members` output: the replicas as `docker node ls` shows managers (the one that
//! answered marked `*` after its ID), then the etcd endpoints; or one stable JSON object.

use super::output::{Format, ago, print_json, print_table};
use hush_proto::v1 as pb;
use serde_json::{Value, json};

pub fn print(listing: &pb::MembersResponse, format: Format) -> std::io::Result<()> {
    match format {
        Format::Json => print_json(&to_json(listing)),
        Format::Table => {
            let now = chrono::Utc::now();
            let rows: Vec<Vec<String>> = listing
                .members
                .iter()
                .map(|m| {
                    vec![
                        if m.answering { format!("{} *", m.id) } else { m.id.clone() },
                        m.address.clone(),
                        status(m).to_string(),
                        if m.leader { "Leader".into() } else { String::new() },
                        ago(&m.last_heartbeat, now),
                    ]
                })
                .collect();
            print_table(&["ID", "ADDRESS", "STATUS", "LEADER", "LAST HEARTBEAT"], &rows)?;
            if listing.endpoints.is_empty() {
                return Ok(());
            }
            println!();
            let rows: Vec<Vec<String>> = listing
                .endpoints
                .iter()
                .map(|e| {
                    let known = !e.version.is_empty();
                    vec![
                        e.endpoint.clone(),
                        health(e).to_string(),
                        if e.leader { "Leader".into() } else { String::new() },
                        e.version.clone(),
                        if known { human_size(e.db_size) } else { String::new() },
                        e.error.replace(['\n', '\r', '\t'], " "),
                    ]
                })
                .collect();
            print_table(&["ETCD ENDPOINT", "HEALTH", "LEADER", "VERSION", "DB SIZE", "ERROR"], &rows)
        }
    }
}

fn status(m: &pb::Member) -> &'static str {
    if m.ready { "Ready" } else { "Down" }
}

fn health(e: &pb::EtcdEndpoint) -> &'static str {
    if e.healthy { "healthy" } else { "unhealthy" }
}

/// The JSON form; its keys are a contract (scripts read them).
pub fn to_json(listing: &pb::MembersResponse) -> Value {
    json!({
        "Store": listing.store,
        "Replicas": listing.members.iter().map(|m| json!({
            "ID": m.id,
            "Address": m.address,
            "Status": status(m),
            "Leader": m.leader,
            "Self": m.answering,
            "LastHeartbeat": m.last_heartbeat,
            "StartedAt": m.started_at,
            "Version": m.version,
        })).collect::<Vec<_>>(),
        "Etcd": listing.endpoints.iter().map(|e| json!({
            "Endpoint": e.endpoint,
            "Health": health(e),
            "Leader": e.leader,
            "Version": e.version,
            "DbSize": e.db_size,
            "Error": e.error,
        })).collect::<Vec<_>>(),
    })
}

/// Decimal sizes with four significant digits, as Docker prints them (go-units `HumanSize`):
/// `24.58kB`, `1.5MB`.
fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut size = bytes.max(0) as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    // `%.4g`: four significant digits, trailing zeros dropped.
    let decimals = match size {
        s if s >= 1000.0 => 0,
        s if s >= 100.0 => 1,
        s if s >= 10.0 => 2,
        _ => 3,
    };
    let text = format!("{size:.decimals$}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_dockers() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(24576), "24.58kB");
        assert_eq!(human_size(1_500_000), "1.5MB");
        assert_eq!(human_size(2_147_483_648), "2.147GB");
    }
}
