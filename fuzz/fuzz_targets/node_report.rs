//! A node's access report (the protobuf bytes an agent sends) through the vault's validation:
//! whatever a node says, what is written is only `open`/`read`/`denied`/`dropped`, stated as
//! the vault states it (node, actor, service, task from the store's facts), capped, and at
//! most one entry per event plus one counting the refusals; never a panic.
#![no_main]

use hush_proto::v1 as pb;
use hush_vault::reports::{Facts, validated};
use hush_vault::tasks::TaskOwner;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const NODE: &str = "n0000000000000000000000nd";
/// A task the node started, one another node's (unknown here), one whose lookup failed.
const MINE: &str = "t0000000000000000000000mn";
const OTHER: &str = "t00000000000000000000othr";
const BROKEN: &str = "t000000000000000000broken";

fn facts() -> Facts {
    let owner = TaskOwner { node_id: NODE.into(), service_name: "web".into(), started_at: chrono::Utc::now() };
    let mut facts = Facts::default();
    facts.owners.insert(MINE.into(), Ok(Some(owner)));
    facts.owners.insert(OTHER.into(), Ok(None));
    facts.owners.insert(BROKEN.into(), Err("store unavailable".into()));
    facts.services.extend(["web".to_string(), "db".to_string()]);
    facts
}

fuzz_target!(|data: &[u8]| {
    let Ok(report) = pb::AccessReport::decode(data) else { return };
    let events = report.events.len();
    let facts = facts();
    let entries = validated(NODE, report.events, &facts);
    assert!(entries.len() <= events + 1);
    for entry in &entries {
        assert!(matches!(entry.op.as_str(), "open" | "read" | "denied" | "dropped"), "{entry:?}");
        assert_eq!(entry.node.as_deref(), Some(NODE));
        assert_eq!(entry.actor.as_deref(), Some(format!("node:{NODE}").as_str()));
        assert!(chrono::DateTime::parse_from_rfc3339(&entry.time).is_ok(), "the vault's time");
        if let Some(task) = &entry.task {
            assert_eq!(task, MINE, "only the node's own task");
            assert_eq!(entry.service.as_deref(), Some("web"), "the task's service, as the store says");
        }
        if let Some(service) = &entry.service {
            assert!(facts.services.contains(service), "{service:?} is no service");
        }
        // Capped: a few kilobytes at most, however large the event.
        let line = serde_json::to_string(&entry.clone().bounded()).expect("serialises");
        assert!(line.len() < 8 * 1024, "{} bytes", line.len());
        assert_eq!(&entry.clone().bounded(), entry, "already within the log's caps");
    }
});
