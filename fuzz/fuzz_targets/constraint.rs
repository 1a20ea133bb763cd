//! The placement constraint parser (`--constraint`, compose `deploy.placement.constraints`, and
//! the stored form of a service's constraints): any text is refused or parses to a constraint
//! whose canonical spelling parses back to the same constraint, and evaluating it never panics.
#![no_main]

use hush_vault::nodes::NodeRecord;
use hush_vault::placement::holds;
use hush_vault::spec::parse_constraint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(constraint) = parse_constraint(text) else { return };
    let canonical = constraint.to_string();
    assert_eq!(parse_constraint(&canonical).ok().as_ref(), Some(&constraint), "{canonical:?}");
    let json = serde_json::to_string(&constraint).expect("serialises");
    assert_eq!(serde_json::from_str::<hush_vault::spec::Constraint>(&json).ok().as_ref(), Some(&constraint));
    let now = chrono::Utc::now();
    let node = NodeRecord {
        id: "n1".into(),
        name: text.into(),
        joined_at: now,
        last_seen: now,
        labels: [(text.to_string(), text.to_string()), ("role".to_string(), "db".to_string())].into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        join_token_id: None,
    };
    let _ = holds(&constraint, &node);
});
