//! Placement: which nodes may run a service's tasks. The vault decides, as Swarm's scheduler
//! does, from the service's constraints over node attributes and admin-set node labels.

use crate::nodes::NodeRecord;
use crate::services::ServiceRecord;
use crate::spec::{Attribute, Constraint, Operator};

/// Every node's role: the vault is the only manager, and it runs no tasks.
pub const NODE_ROLE: &str = "worker";

/// A node the service's constraints exclude, and the first constraint it fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {node} may not run service {service}: it does not satisfy the constraint {constraint}")]
pub struct Excluded {
    pub node: String,
    pub service: String,
    pub constraint: String,
}

/// The node's value of an attribute; a missing label reads as empty, as in Swarm (so `==`
/// fails and `!=` holds).
fn value_of<'a>(node: &'a NodeRecord, attribute: &Attribute) -> &'a str {
    match attribute {
        Attribute::Id => &node.id,
        Attribute::Hostname => &node.name,
        Attribute::Role => NODE_ROLE,
        Attribute::Os => &node.os,
        Attribute::Arch => &node.arch,
        Attribute::Label(key) => node.labels.get(key).map_or("", String::as_str),
    }
}

/// Whether one constraint holds on `node` (values compared ignoring ASCII case, as Swarm).
pub fn holds(constraint: &Constraint, node: &NodeRecord) -> bool {
    let equal = value_of(node, &constraint.attribute).eq_ignore_ascii_case(&constraint.value);
    match constraint.operator {
        Operator::Eq => equal,
        Operator::Ne => !equal,
    }
}

/// May node `node` run tasks of `service`? Yes when every constraint of the service holds on
/// the node (a service without constraints may run on any node, as in Swarm); otherwise the
/// first constraint it fails.
///
/// This is the one place the answer is made. `StartTask` asks it before recording a task, the
/// assignment stream asks it again before sending a task's values, label and constraint changes
/// end the tasks it now refuses, and the service directories an agent serves to containers
/// (issue #9) are to be chosen with it too, so every path agrees on where a service may run.
///
/// `node.hostname`, `node.platform.os` and `node.platform.arch` are what the node said when it
/// joined: only `node.id` and `node.labels.*` are set by the vault and its admins, so only those
/// keep a service's secrets away from a node that holds a join token.
pub fn may_run(node: &NodeRecord, service: &ServiceRecord) -> Result<(), Excluded> {
    match service.constraints.iter().find(|c| !holds(c, node)) {
        None => Ok(()),
        Some(failed) => Err(Excluded {
            node: if node.name.is_empty() { node.id.clone() } else { format!("{} ({})", node.name, node.id) },
            service: service.name.clone(),
            constraint: failed.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_constraint;
    use chrono::Utc;
    use std::collections::BTreeMap;

    fn node(labels: &[(&str, &str)]) -> NodeRecord {
        NodeRecord {
            id: "n1id".into(),
            name: "n1".into(),
            joined_at: Utc::now(),
            last_seen: Utc::now(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            os: "linux".into(),
            arch: "x86_64".into(),
            join_token_id: None,
        }
    }

    fn service(constraints: &[&str]) -> ServiceRecord {
        ServiceRecord {
            id: "s".into(),
            name: "db".into(),
            labels: BTreeMap::new(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            secrets: vec![],
            configs: vec![],
            constraints: constraints.iter().map(|c| parse_constraint(c).unwrap()).collect(),
        }
    }

    #[test]
    fn every_constraint_must_hold() {
        let db = node(&[("role", "db"), ("zone", "A")]);
        let web = node(&[("role", "web")]);
        assert_eq!(may_run(&web, &service(&[])), Ok(()), "no constraints: any node");
        let s = service(&["node.labels.role==db", "node.hostname!=n2"]);
        assert_eq!(may_run(&db, &s), Ok(()));
        let refused = may_run(&web, &s).unwrap_err();
        assert_eq!(refused.constraint, "node.labels.role==db");
        assert_eq!(
            refused.to_string(),
            "node n1 (n1id) may not run service db: it does not satisfy the constraint node.labels.role==db"
        );
        assert!(may_run(&db, &service(&["node.hostname!=N1"])).is_err(), "values ignore case");
        assert!(may_run(&db, &service(&["node.labels.zone==a"])).is_ok());
        assert!(may_run(&db, &service(&["node.labels.Zone==a"])).is_err(), "label keys keep their case");
        // A missing label is empty: `==` fails, `!=` holds.
        assert!(may_run(&web, &service(&["node.labels.zone==a"])).is_err());
        assert!(may_run(&web, &service(&["node.labels.zone!=a"])).is_ok());
        assert!(may_run(&db, &service(&["node.id==n1id", "node.role==worker", "node.platform.os==linux"])).is_ok());
        assert!(may_run(&db, &service(&["node.role==manager"])).is_err());
        assert!(may_run(&db, &service(&["node.labels.role==d*"])).is_err(), "no wildcards");
    }
}
