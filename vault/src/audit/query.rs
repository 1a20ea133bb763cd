//! Which entries a query wants.

use super::entry::AuditEntry;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Default)]
pub struct Query {
    pub secret: Option<String>,
    pub config: Option<String>,
    pub service: Option<String>,
    pub node: Option<String>,
    pub task: Option<String>,
    /// A container name, or a container ID prefix.
    pub container: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

fn wants(filter: &Option<String>, value: &Option<String>) -> bool {
    filter.as_ref().is_none_or(|f| value.as_ref() == Some(f))
}

impl Query {
    /// Texts every stored line of a matching entry contains: `"secret":"NAME"` and the like for
    /// the exact-match filters. Lines are written compact by serde_json (chain.rs), so an
    /// entry whose `secret` is NAME always holds `"secret":` then NAME as JSON; a line without
    /// a needle cannot match and need not be parsed (most of a filtered query's lines).
    pub fn needles(&self) -> Vec<String> {
        [("secret", &self.secret), ("config", &self.config), ("service", &self.service), ("node", &self.node)]
            .into_iter()
            .filter_map(|(key, value)| {
                let value = serde_json::to_string(value.as_ref()?).expect("strings serialise");
                Some(format!("\"{key}\":{value}"))
            })
            .collect()
    }

    pub fn matches(&self, entry: &AuditEntry) -> bool {
        let time = DateTime::parse_from_rfc3339(&entry.time).ok().map(|t| t.with_timezone(&Utc));
        wants(&self.secret, &entry.secret)
            && wants(&self.config, &entry.config)
            && wants(&self.service, &entry.service)
            && wants(&self.node, &entry.node)
            // A task matches by ID or name; a container task also by its container's ID.
            && self.task.as_ref().is_none_or(|t| {
                [&entry.task, &entry.container].iter().any(|id| id.as_deref().is_some_and(|e| e.starts_with(t.as_str())))
            })
            && self.container.as_ref().is_none_or(|c| {
                entry.container_name.as_deref() == Some(c.as_str())
                    || entry.container.as_deref().is_some_and(|id| id.starts_with(c.as_str()))
            })
            && self.since.is_none_or(|s| time.is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| time.is_some_and(|t| t <= u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_the_needles_never_matches() {
        let entry = AuditEntry {
            service: Some("web".into()),
            node: Some("n\"1".into()),
            ..AuditEntry::now("read").object(crate::model::Kind::Secret, "db_pw")
        };
        let line = serde_json::to_string(&entry).unwrap();
        let wanted = |query: &Query| query.needles().iter().all(|n| line.contains(n.as_str()));
        let query = Query { secret: Some("db_pw".into()), service: Some("web".into()), ..Default::default() };
        assert!(query.matches(&entry) && wanted(&query));
        let query = Query { node: Some("n\"1".into()), ..Default::default() };
        assert!(query.matches(&entry) && wanted(&query), "escaped as the line escapes it");
        for query in [
            Query { secret: Some("db".into()), ..Default::default() },
            Query { config: Some("db_pw".into()), ..Default::default() },
            Query { service: Some("web2".into()), ..Default::default() },
        ] {
            assert!(!query.matches(&entry) && !wanted(&query), "{query:?}");
        }
        assert!(Query::default().needles().is_empty());
    }
}
