//! A node's audit reports, checked before anything is written: the vault decides what a node
//! may say. Only `open`, `read`, `denied`, `dropped` and `agent_restart` (about the node itself);
//! only about tasks this node started;
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
use chrono::{DateTime, Utc};
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

/// How far back a node's time for an access about no task may go (the vault keeps task-owner
/// records as long: older reports about tasks are refused anyway).
const TASKLESS_HORIZON: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// A node's time for an access (RFC 3339), as the vault records it: never after `now`, never
/// before `floor` (the task's start), else moved to that bound; `None` if it is no time.
fn bounded_time(text: &str, floor: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let time = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
    Some(time.clamp(floor, now.max(floor)))
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The first and last times of an event's accesses, bounded (see [`bounded_time`]); the last
/// only for a fold, and never before the first.
fn access_times(event: &pb::AccessEvent, floor: DateTime<Utc>) -> (Option<String>, Option<String>) {
    let now = Utc::now();
    let first = bounded_time(&event.time, floor, now);
    let last = if event.count > 1 { bounded_time(&event.last_time, floor, now) } else { None };
    let last = match (first, last) {
        (Some(first), Some(last)) => Some(last.max(first)),
        (_, last) => last,
    };
    (first.map(rfc3339), last.map(rfc3339))
}

fn capped(text: String, max: usize) -> Option<String> {
    (!text.is_empty()).then(|| crate::audit::entry::truncated(&text, max).into_owned())
}

fn is_task_id(id: &str) -> bool {
    id.len() == 25 && id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// What the store says about the tasks and services a report names, looked up before the
/// report is checked so that [`validated`] needs no store and no runtime (the fuzz target calls
/// it too).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The owner of each task ID the report names (`None`: not a task this node started;
    /// `Err`: the lookup failed, so the events about it are refused).
    pub owners: HashMap<String, Result<Option<TaskOwner>, String>>,
    /// Every service's name, when the report holds a refused open that belongs to no task.
    pub services: HashSet<String>,
}

/// Whether `event` names a task whose owner [`validated`] needs.
fn names_task(event: &pb::AccessEvent) -> bool {
    matches!(event.op.as_str(), "open" | "read" | "denied") && is_task_id(&event.task_id)
}

/// Whether `event` is a refused open that belongs to no task (its service is kept if it exists).
fn taskless_denial(event: &pb::AccessEvent) -> bool {
    event.task_id.is_empty() && event.op == "denied"
}

/// The entries to write for `events` from `node_id`: the store's [`Facts`] looked up once per
/// task and report, then [`validated`].
pub async fn entries_for(
    tasks: &Tasks,
    services: Option<&Services>,
    node_id: &str,
    events: Vec<pb::AccessEvent>,
) -> Vec<AuditEntry> {
    let mut facts = Facts::default();
    for event in events.iter().filter(|e| names_task(e)) {
        if !facts.owners.contains_key(&event.task_id) {
            let owner = tasks.owner(node_id, &event.task_id).await.map_err(|e| e.to_string());
            facts.owners.insert(event.task_id.clone(), owner);
        }
    }
    if events.iter().any(taskless_denial)
        && let Some(services) = services
    {
        facts.services = services.list().await.map(|l| l.into_iter().map(|s| s.name).collect()).unwrap_or_default();
    }
    validated(node_id, events, &facts)
}

/// The entries to write for `events` from `node_id`, given what the store says ([`Facts`]):
/// the valid ones as the vault states them, then one `denied` entry counting the refused ones,
/// if any. Pure: no store, no clock but the vault's own for times.
pub fn validated(node_id: &str, events: Vec<pb::AccessEvent>, facts: &Facts) -> Vec<AuditEntry> {
    let actor = format!("node:{node_id}");
    let mut entries = Vec::with_capacity(events.len());
    let (mut refused, mut first_problem) = (0u64, None::<String>);
    for event in events {
        match checked(node_id, &actor, event, facts) {
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

fn checked(node_id: &str, actor: &str, event: pb::AccessEvent, facts: &Facts) -> Result<AuditEntry, String> {
    let stated = AuditEntry { node: Some(node_id.to_string()), ..AuditEntry::now(&event.op).actor(actor) };
    match event.op.as_str() {
        "dropped" => {
            return Ok(AuditEntry { count: Some(event.count.max(1)), ..stated });
        }
        // The agent's own restart (a takeover, a recovery after a crash): about this node only,
        // at the vault's time; the node says only how, capped.
        "agent_restart" => {
            return Ok(AuditEntry { reason: capped(event.reason, MAX_REASON), ..stated });
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
    let described = |entry: AuditEntry, floor: DateTime<Utc>| AuditEntry {
        version: (event.version > 0).then_some(event.version),
        pid: Some(event.pid),
        uid: Some(event.uid),
        gid: Some(event.gid),
        command: capped(event.command.clone(), MAX_COMMAND),
        bytes: (event.bytes > 0).then_some(event.bytes),
        count: (event.count > 0).then_some(event.count),
        reason: if event.op == "denied" { capped(event.reason.clone(), MAX_REASON) } else { None },
        path: capped(event.path.clone(), MAX_PATH),
        // `time` is the vault's (when the report arrived); the node's times of the first and
        // last access are kept beside it, bounded by the task's start and the vault's clock.
        first_time: access_times(&event, floor).0,
        last_time: access_times(&event, floor).1,
        container: capped(event.container.clone(), MAX_PATH),
        container_name: capped(event.container_name.clone(), MAX_PATH),
        image: capped(event.image.clone(), MAX_PATH),
        ..entry
    };
    // A refused open of a file that belongs to no task: a service's directory (a container
    // of another service, say) or the mount's root. The service is kept if it exists.
    if taskless_denial(&event) {
        let service = facts.services.contains(&event.service).then(|| event.service.clone());
        return object(described(AuditEntry { service, ..stated }, Utc::now() - TASKLESS_HORIZON));
    }
    if !is_task_id(&event.task_id) {
        return Err("it names no task ID".into());
    }
    let owner = match facts.owners.get(&event.task_id) {
        Some(Ok(owner)) => owner.clone(),
        Some(Err(e)) => return Err(format!("its task: {e}")),
        None => None,
    };
    let Some(owner) = owner else {
        return Err(format!("task {} is not one this node started", event.task_id));
    };
    let started = owner.started_at;
    object(described(
        AuditEntry { service: Some(owner.service_name), task: Some(event.task_id.clone()), ..stated },
        started,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(time: &str, last_time: &str, count: u64) -> pb::AccessEvent {
        pb::AccessEvent { time: time.into(), last_time: last_time.into(), count, ..Default::default() }
    }

    #[test]
    fn a_nodes_access_times_are_kept_within_the_task_and_the_vaults_clock() {
        let started = Utc::now() - chrono::TimeDelta::minutes(10);
        let at = |minutes: i64| rfc3339(started + chrono::TimeDelta::minutes(minutes));
        // A fold within the task's life: kept as the node said.
        assert_eq!(access_times(&timed(&at(1), &at(2), 5), started), (Some(at(1)), Some(at(2))));
        // A single access has no last time.
        assert_eq!(access_times(&timed(&at(1), &at(2), 1), started), (Some(at(1)), None));
        // Before the task started: moved to its start. In the future: moved to now.
        let (first, last) = access_times(&timed(&at(-60), &at(600), 2), started);
        assert_eq!(first, Some(rfc3339(started)));
        let last = DateTime::parse_from_rfc3339(&last.unwrap()).unwrap();
        assert!(last <= Utc::now() && last > started + chrono::TimeDelta::minutes(9), "{last}");
        // Never a last before the first; no time at all is no time.
        assert_eq!(access_times(&timed(&at(3), &at(2), 2), started), (Some(at(3)), Some(at(3))));
        assert_eq!(access_times(&timed("yesterday", "", 2), started), (None, None));
    }

    const MINE: &str = "t0000000000000000000000mn";

    fn event(op: &str, task: &str) -> pb::AccessEvent {
        pb::AccessEvent {
            op: op.into(),
            task_id: task.into(),
            service: "admin-console".into(),
            name: "db_pw".into(),
            command: "x".repeat(10_000),
            time: "1999-01-01T00:00:00Z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn reports_are_stated_as_the_vault_knows_them() {
        let mut facts = Facts::default();
        let owner = TaskOwner { node_id: "n1".into(), service_name: "web".into(), started_at: chrono::Utc::now() };
        facts.owners.insert(MINE.into(), Ok(Some(owner)));
        facts.services.insert("db".into());
        let mut taskless = event("denied", "");
        taskless.service = "db".into();
        let events = vec![
            event("read", MINE),
            event("read", "t00000000000000000000othr"),
            event("rotate", MINE),
            event("open", "not-a-task"),
            taskless,
            event("denied", ""),
        ];
        let entries = validated("n1", events, &facts);
        assert_eq!(entries.len(), 4, "{entries:#?}");
        let read = &entries[0];
        assert_eq!(
            (read.service.as_deref(), read.task.as_deref()),
            (Some("web"), Some(MINE)),
            "service from the store"
        );
        assert_eq!((read.node.as_deref(), read.actor.as_deref()), (Some("n1"), Some("node:n1")));
        assert!(!read.time.starts_with("1999"), "time is the vault's");
        assert!(read.command.as_ref().unwrap().len() < 100, "capped");
        assert_eq!(entries[1].service.as_deref(), Some("db"), "a taskless denial keeps a service that exists");
        assert_eq!(entries[2].service, None, "and drops one that does not");
        let refused = &entries[3];
        assert_eq!((refused.op.as_str(), refused.count), ("denied", Some(3)));
        assert!(refused.reason.as_ref().unwrap().contains("is not one this node started"), "{refused:?}");
    }

    #[test]
    fn an_agent_restart_is_about_the_reporting_node_only() {
        let restart = pb::AccessEvent {
            op: "agent_restart".into(),
            reason: "took over from pid 7 ".repeat(100),
            task_id: MINE.into(),
            service: "web".into(),
            name: "db_pw".into(),
            time: "1999-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        let entries = validated("n1", vec![restart], &Facts::default());
        assert_eq!(entries.len(), 1, "{entries:#?}");
        let entry = &entries[0];
        assert_eq!(
            (entry.op.as_str(), entry.node.as_deref(), entry.actor.as_deref()),
            ("agent_restart", Some("n1"), Some("node:n1"))
        );
        // Nothing but how: no task, service or object the node named; the vault's time.
        assert_eq!((entry.task.as_deref(), entry.service.as_deref(), entry.secret.as_deref()), (None, None, None));
        assert!(!entry.time.starts_with("1999"));
        assert!(entry.reason.as_ref().unwrap().len() < MAX_REASON + 32, "capped");
    }

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
