//! One audit entry: a flat JSON object, keys as DESIGN.md §3 names them, absent where they do
//! not apply. Never a value: entries name secrets and versions, not their contents.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(default)]
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// `open`, `read`, `create`, `rotate`, `rm`, `inspect`, `service_create`, ..., `denied`, `dropped`.
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// `/proc/PID/comm` of the reading process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Reads folded into this entry, or events dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The file's path inside the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Hex SHA-256 of the previous line (the chain).
    #[serde(default)]
    pub prev: String,
}

impl AuditEntry {
    /// A new entry stamped now.
    pub fn now(op: &str) -> Self {
        Self {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            op: op.to_string(),
            ..Self::default()
        }
    }

    /// A refusal: who asked, and why they were refused.
    pub fn denied(actor: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { reason: Some(reason.into()), ..Self::now("denied").actor(actor) }
    }

    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Names the object: `secret` or `config` by kind.
    pub fn object(mut self, kind: crate::model::Kind, name: &str) -> Self {
        match kind {
            crate::model::Kind::Secret => self.secret = Some(name.to_string()),
            crate::model::Kind::Config => self.config = Some(name.to_string()),
        }
        self
    }
}
