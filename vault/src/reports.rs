//! A node's audit reports, checked before anything is written: the vault decides what a node
//! may say. Only `open`, `read`, `denied` and `dropped`; only about tasks this node started;
//! time, service, node and actor set by the vault; every field capped; at most
//! [`MAX_EVENTS`] per report and [`RATE`] per node.
//!
//! # Security
//! A node (or whoever holds its key) can still report accesses that did not happen on its own
//! tasks — the vault cannot see inside a node — but it cannot write entries that look like
//! an admin's actions, another node's or another service's, nor back-date them, nor make them
//! large. Refused events are not dropped silently: each report's refusals become one counted
//! `denied` entry.

use crate::audit::AuditEntry;
use crate::model::{Kind, validate_name};
use crate::ratelimit::{Limiter, Rate};
use crate::services::Services;
use crate::tasks::{TaskOwner, Tasks};
use hush_proto::v1 as pb;
use std::collections::{HashMap, HashSet};
use tonic::Status;

/// Events in one report (the agent sends at most 2,000).
pub const MAX_EVENTS: usize = 2_000;
/// Events one node may report: 100,000 at once, then 20,000 per second.
pub const RATE: Rate = Rate { per_second: 20_000.0, burst: 100_000.0 };
/// Nodes tracked one by one (the target is 1,000).
const MAX_NODES: usize = 10_000;
/// `/proc/PID/comm` is at most 15 bytes; a little room for other runtimes' names.
const MAX_COMMAND: usize = 64;
const MAX_PATH: usize = 1024;
const MAX_REASON: usize = 256;

/// The per-node event budget.
pub struct ReportLimiter(Limiter<String>);

impl Default for ReportLimiter {
    fn default() -> Self {
        Self(Limiter::new(RATE, MAX_NODES))
    }
}

impl ReportLimiter {
    /// Refuses a report that is too large or beyond the node's rate (the agent retries later).
    pub fn admit(&self, node_id: &str, events: usize) -> Result<(), Status> {
        if events > MAX_EVENTS {
            return Err(Status::invalid_argument(format!(
                "an access report holds at most {MAX_EVENTS} events ({events} sent)"
            )));
        }
        if !self.0.try_take(&node_id.to_string(), events as f64) {
            return Err(Status::resource_exhausted("access reports beyond this node's rate: retry later"));
        }
        Ok(())
    }
}

fn capped(text: String, max: usize) -> Option<String> {
    (!text.is_empty()).then(|| crate::audit::entry::truncated(&text, max).into_owned())
}

fn is_task_id(id: &str) -> bool {
    id.len() == 25 && id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// The entries to write for `events` from `node_id`: the valid ones as the vault states them,
/// then one `denied` entry counting the refused ones, if any.
pub async fn entries_for(
    tasks: &Tasks,
    services: Option<&Services>,
    node_id: &str,
    events: Vec<pb::AccessEvent>,
) -> Vec<AuditEntry> {
    let actor = format!("node:{node_id}");
    let mut known = Known { services, names: None, owners: HashMap::new() };
    let mut entries = Vec::with_capacity(events.len());
    let (mut refused, mut first_problem) = (0u64, None::<String>);
    for event in events {
        match checked(tasks, node_id, &actor, event, &mut known).await {
            Ok(entry) => entries.push(entry),
            Err(problem) => {
                refused += 1;
                first_problem.get_or_insert(problem);
            }
        }
    }
    if let Some(problem) = first_problem {
        let reason = format!("access report: {refused} events refused, the first because {problem}");
        entries.push(AuditEntry {
            node: Some(node_id.to_string()),
            count: Some(refused),
            ..AuditEntry::denied(actor, reason)
        });
    }
    entries
}

/// What one report's checks looked up, so each is looked up once.
struct Known<'a> {
    services: Option<&'a Services>,
    names: Option<HashSet<String>>,
    owners: HashMap<String, Option<TaskOwner>>,
}

impl Known<'_> {
    /// Whether a service of that name exists.
    async fn is_service(&mut self, name: &str) -> bool {
        if self.names.is_none() {
            let names = match self.services {
                Some(services) => services.list().await.map(|l| l.into_iter().map(|s| s.name).collect()),
                None => Ok(HashSet::new()),
            };
            self.names = Some(names.unwrap_or_default());
        }
        self.names.as_ref().is_some_and(|names| names.contains(name))
    }
}

async fn checked(
    tasks: &Tasks,
    node_id: &str,
    actor: &str,
    event: pb::AccessEvent,
    known: &mut Known<'_>,
) -> Result<AuditEntry, String> {
    let owners = &mut known.owners;
    let stated = AuditEntry { node: Some(node_id.to_string()), ..AuditEntry::now(&event.op).actor(actor) };
    match event.op.as_str() {
        "dropped" => {
            return Ok(AuditEntry { count: Some(event.count.max(1)), ..stated });
        }
        "open" | "read" | "denied" => {}
        other => {
            return Err(format!("its op {:?} is not one a node may report", crate::audit::entry::truncated(other, 32)));
        }
    }
    let kind = if event.kind == pb::Kind::Config as i32 { Kind::Config } else { Kind::Secret };
    let object = |entry: AuditEntry| -> Result<AuditEntry, String> {
        if event.name.is_empty() {
            return Ok(entry);
        }
        validate_name(&event.name).map_err(|_| "it names no valid secret or config".to_string())?;
        Ok(entry.object(kind, &event.name))
    };
    let described = |entry: AuditEntry| AuditEntry {
        version: (event.version > 0).then_some(event.version),
        pid: Some(event.pid),
        uid: Some(event.uid),
        gid: Some(event.gid),
        command: capped(event.command.clone(), MAX_COMMAND),
        bytes: (event.bytes > 0).then_some(event.bytes),
        count: (event.count > 0).then_some(event.count),
        reason: if event.op == "denied" { capped(event.reason.clone(), MAX_REASON) } else { None },
        path: capped(event.path.clone(), MAX_PATH),
        // Times are the vault's: a fold's end is when its report arrived, not the node's claim.
        last_time: (!event.last_time.is_empty())
            .then(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        container: capped(event.container.clone(), MAX_PATH),
        container_name: capped(event.container_name.clone(), MAX_PATH),
        image: capped(event.image.clone(), MAX_PATH),
        ..entry
    };
    // A refused open of a file that belongs to no task: a service's directory (a container
    // of another service, say) or the mount's root. The service is kept if it exists.
    if event.task_id.is_empty() && event.op == "denied" {
        let service = if known.is_service(&event.service).await { Some(event.service.clone()) } else { None };
        return object(described(AuditEntry { service, ..stated }));
    }
    if !is_task_id(&event.task_id) {
        return Err("it names no task ID".into());
    }
    let owner = match owners.get(&event.task_id) {
        Some(owner) => owner.clone(),
        None => {
            let owner = tasks.owner(node_id, &event.task_id).await.map_err(|e| format!("its task: {e}"))?;
            owners.insert(event.task_id.clone(), owner.clone());
            owner
        }
    };
    let Some(owner) = owner else {
        return Err(format!("task {} is not one this node started", event.task_id));
    };
    object(described(AuditEntry { service: Some(owner.service_name), task: Some(event.task_id.clone()), ..stated }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_bounded_in_size_and_rate() {
        let limiter = ReportLimiter::default();
        assert_eq!(limiter.admit("n1", MAX_EVENTS + 1).unwrap_err().code(), tonic::Code::InvalidArgument);
        let mut admitted = 0;
        while limiter.admit("n1", MAX_EVENTS).is_ok() {
            admitted += MAX_EVENTS;
            assert!(admitted <= RATE.burst as usize + 2 * MAX_EVENTS, "no limit");
        }
        assert_eq!(limiter.admit("n1", 1000).unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert!(limiter.admit("n2", MAX_EVENTS).is_ok(), "another node has its own budget");
    }
}
