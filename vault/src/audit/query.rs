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
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        let time = DateTime::parse_from_rfc3339(&entry.time).ok().map(|t| t.with_timezone(&Utc));
        wants(&self.secret, &entry.secret)
            && wants(&self.config, &entry.config)
            && wants(&self.service, &entry.service)
            && wants(&self.node, &entry.node)
            // A task matches by ID or name.
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
