//! One audit entry: a flat JSON object, keys as DESIGN.md §3 names them, absent where they do
//! not apply. Never a value: entries name secrets and versions, not their contents.
//!
//! # Security
//! Every text field is capped ([`AuditEntry::bounded`], applied by the log to every entry it
//! writes): a caller that controls a field (a joining host's name, a task's command name) can
//! make an entry a few hundred bytes long, never megabytes.

use serde::{Deserialize, Serialize};

/// Longest text field kept whole, in bytes (names are at most 64, IDs 25, comm 15).
pub const MAX_FIELD: usize = 256;
/// `reason` and `path` carry more (an error message, a path inside a task).
pub const MAX_LONG_FIELD: usize = 1024;

/// `text` cut to at most `max` bytes (on a character boundary) with a marker saying how much
/// was cut: `…[+N bytes]`. The marker itself is not counted in `max`.
pub fn truncated(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…[+{} bytes]", &text[..end], text.len() - end))
}

fn cap(field: &mut Option<String>, max: usize) {
    if let Some(text) = field
        && text.len() > max
    {
        *text = truncated(text, max).into_owned();
    }
}

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
    /// Identical accesses folded into this entry, or events dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A node's access: when the (first) access happened, as the node says, bounded by the
    /// vault (not before the task started, not after the vault received it). `time` is when
    /// the vault recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_time: Option<String>,
    /// The last of the `count` accesses folded into this entry, bounded as `first_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The file's path inside the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Container tasks: the container's ID (then `uid`/`gid` are as seen inside the container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Container tasks: the container's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Container tasks: the container's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The ID of a join token (joins, refused joins, `node join-token`); never the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Replicas on etcd: the replica whose chain holds this entry (shared.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// A `checkpoint` entry: where the other replicas' chains stood (shared.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<Vec<ChainMark>>,
    /// The previous line's `mac` (the chain; chain.rs).
    #[serde(default)]
    pub prev: String,
    /// Hex HMAC-SHA256, under the audit key, of this line without this field (chain.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Where one replica's chain stood: its last entry's sequence number and MAC, and the first
/// sequence number of the segment in the store that holds that entry (to find it again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainMark {
    pub replica: String,
    pub seq: u64,
    pub mac: String,
    pub segment: u64,
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

    /// The entry with every text field capped ([`MAX_FIELD`], [`MAX_LONG_FIELD`]).
    pub fn bounded(mut self) -> Self {
        if self.op.len() > MAX_FIELD {
            self.op = truncated(&self.op, MAX_FIELD).into_owned();
        }
        if self.time.len() > MAX_FIELD {
            self.time = truncated(&self.time, MAX_FIELD).into_owned();
        }
        for field in [
            &mut self.actor,
            &mut self.node,
            &mut self.service,
            &mut self.task,
            &mut self.secret,
            &mut self.config,
            &mut self.command,
            &mut self.container,
            &mut self.container_name,
            &mut self.token,
            &mut self.replica,
        ] {
            cap(field, MAX_FIELD);
        }
        cap(&mut self.image, MAX_LONG_FIELD);
        cap(&mut self.reason, MAX_LONG_FIELD);
        cap(&mut self.path, MAX_LONG_FIELD);
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_with_a_marker() {
        let huge = "h".repeat(3 << 20);
        let entry = AuditEntry::denied(format!("joining:{huge}"), format!("join: {huge}")).bounded();
        let json = serde_json::to_string(&entry).unwrap();
        assert!(json.len() < 2 * MAX_LONG_FIELD, "{}", json.len());
        assert!(entry.actor.unwrap().ends_with(&format!("…[+{} bytes]", 8 + huge.len() - MAX_FIELD)));
        assert!(entry.reason.unwrap().contains("…[+"));
        // Short fields are untouched; cuts fall on character boundaries.
        assert_eq!(AuditEntry::now("read").actor("node:n1").bounded().actor.as_deref(), Some("node:n1"));
        assert_eq!(truncated("ééé", 3), "é…[+4 bytes]");
    }
}
