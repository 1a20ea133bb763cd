//! The keyed chain over the log files. Every line ends with `"mac"`: HMAC-SHA256, under the
//! audit key, of the line without that field; `prev` is the previous line's `mac` (the first
//! entry's is the genesis tag). The store keeps the newest (seq, mac), MAC'd as well, so lines
//! removed from the end are detected, and a line added or changed anywhere fails its MAC.
//!
//! # Security
//! The audit key is derived from the data key (HKDF, [`audit_key`]): only a vault holding its
//! key hierarchy can write a line that verifies. With autolock nobody holding a copy of
//! DATA_DIR can; without it, whoever can read the key-encryption key file can (as they can read
//! every value).

use super::entry::AuditEntry;
use crate::crypto::{self, Key};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// HKDF `info` of the audit key.
const AUDIT_KEY_PURPOSE: &[u8] = b"hush/v1/audit-chain";
/// What the vault writes when it finds the log damaged at start: `verify` reports it forever.
pub const DAMAGED_OP: &str = "audit_damaged";

/// The chain's key, from the data key.
pub fn audit_key(data_key: &Key) -> Key {
    crypto::derive_subkey(data_key, AUDIT_KEY_PURPOSE)
}

/// `prev` of the very first entry.
pub fn genesis(key: &Key) -> String {
    crypto::hmac_hex(key, b"hush/v1/audit/genesis")
}

/// The entry as one line (its `prev` already set) and that line's MAC.
pub fn seal_line(key: &Key, mut entry: AuditEntry) -> (String, String) {
    entry.mac = None;
    let body = serde_json::to_string(&entry).expect("entries serialise");
    let mac = crypto::hmac_hex(key, body.as_bytes());
    let line = format!("{},\"mac\":\"{mac}\"}}", &body[..body.len() - 1]);
    (line, mac)
}

#[derive(Debug, PartialEq, Eq)]
pub enum LineError {
    NotAnEntry(String),
    /// Written by an earlier Hush, whose chain was not keyed.
    Unkeyed,
    BadMac,
}

/// Parses a line and checks its MAC; returns the entry and the MAC.
pub fn open_line(key: &Key, line: &str) -> Result<(AuditEntry, String), LineError> {
    let entry: AuditEntry = serde_json::from_str(line).map_err(|e| LineError::NotAnEntry(e.to_string()))?;
    let mac = entry.mac.clone().ok_or(LineError::Unkeyed)?;
    let suffix = format!(",\"mac\":\"{mac}\"}}");
    let body = line.strip_suffix(&suffix).ok_or(LineError::BadMac)?;
    if !crypto::hmac_verify(key, format!("{body}}}").as_bytes(), &mac) {
        return Err(LineError::BadMac);
    }
    Ok((entry, mac))
}

/// The newest entry, as recorded in the store: its sequence number and MAC, MAC'd together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub last: String,
    pub mac: String,
    /// Replicas on etcd: the first sequence number of the segment holding entry `seq` (a
    /// locator, not MAC'd: a wrong one only makes the entry not found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<u64>,
    /// Replicas on etcd: the last entry that is not a `checkpoint` (not MAC'd: it only decides
    /// whether the other replicas record a new checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<u64>,
}

impl Head {
    fn message(seq: u64, last: &str) -> String {
        format!("hush/v1/audit/head/{seq}/{last}")
    }

    pub fn sealed(key: &Key, seq: u64, last: &str) -> Self {
        Self {
            seq,
            last: last.to_string(),
            mac: crypto::hmac_hex(key, Self::message(seq, last).as_bytes()),
            segment: None,
            activity: None,
        }
    }

    pub fn is_authentic(&self, key: &Key) -> bool {
        crypto::hmac_verify(key, Self::message(self.seq, &self.last).as_bytes(), &self.mac)
    }
}

/// What the store holds under the head's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredHead {
    None,
    /// `{seq, hash}`: an earlier Hush's unkeyed head.
    Unkeyed,
    Keyed(Head),
    Unreadable,
}

impl StoredHead {
    pub fn parse(bytes: Option<&[u8]>) -> Self {
        let Some(bytes) = bytes else { return Self::None };
        if let Ok(head) = serde_json::from_slice::<Head>(bytes) {
            return Self::Keyed(head);
        }
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(value) if value.get("hash").is_some() => Self::Unkeyed,
            _ => Self::Unreadable,
        }
    }
}

/// Log files in chain order (names carry the first sequence number, zero-padded).
pub fn log_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| first_seq(p).is_some()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

pub fn file_name(first_seq: u64) -> String {
    format!("audit-{first_seq:012}.jsonl")
}

/// The first sequence number a log file's name announces.
pub fn first_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("audit-")?.strip_suffix(".jsonl")?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    pub files: u32,
    /// Replicas on etcd: the chains checked (one per replica), and the checkpoint marks
    /// checked against the chains they name (shared.rs); 0 for a vault's own files.
    pub chains: u32,
    pub links: u32,
}

/// A walk along one chain: each line must verify and follow the one before it.
pub struct Walk {
    key: Key,
    prev: String,
    next_seq: u64,
}

impl Walk {
    pub fn new(key: &Key) -> Self {
        Self { key: key.clone(), prev: genesis(key), next_seq: 1 }
    }

    /// Entries walked so far.
    pub fn entries(&self) -> u64 {
        self.next_seq - 1
    }

    /// The MAC of the last entry walked (the genesis tag before any).
    pub fn last_mac(&self) -> &str {
        &self.prev
    }

    /// Checks the next line; `place` says where it is (`audit-….jsonl line 3`).
    pub fn step(&mut self, line: &str, place: &str) -> Result<(AuditEntry, String), String> {
        let at = format!("entry {} ({place})", self.next_seq);
        let (entry, mac) = open_line(&self.key, line).map_err(|e| match e {
            LineError::NotAnEntry(e) => format!("{at}: not a valid entry: {e}"),
            LineError::Unkeyed => format!("{at}: has no MAC (written by an earlier Hush, whose chain was not keyed)"),
            LineError::BadMac => format!("{at}: its MAC does not verify (altered, or not written by this vault)"),
        })?;
        // The vault's own record of damage it found comes first: it says what happened.
        if entry.op == DAMAGED_OP {
            return Err(format!(
                "{at}: the vault found the log damaged when it started: {}",
                entry.reason.clone().unwrap_or_default()
            ));
        }
        if entry.seq != self.next_seq {
            return Err(format!("{at}: sequence number is {} (entries removed, inserted or reordered)", entry.seq));
        }
        if entry.prev != self.prev {
            return Err(format!("{at}: does not follow the entry before it (entries removed, inserted or reordered)"));
        }
        self.prev = mac.clone();
        self.next_seq += 1;
        Ok((entry, mac))
    }

    /// Checks the end of the walk against the recorded head.
    pub fn finish(&self, head: &StoredHead) -> Result<(), String> {
        let entries = self.entries();
        match head {
            StoredHead::None if entries == 0 => Ok(()),
            StoredHead::None => Err("no chain head is recorded for this log (it was removed from the store)".into()),
            StoredHead::Unkeyed => Err("the recorded chain head is an earlier Hush's, not keyed".into()),
            StoredHead::Unreadable => Err("the recorded chain head is unreadable".into()),
            StoredHead::Keyed(head) if !head.is_authentic(&self.key) => {
                Err("the recorded chain head was altered".into())
            }
            StoredHead::Keyed(head) if head.seq > entries => Err(format!(
                "the log ends at entry {entries} but entry {} was written: entries were removed from the end",
                head.seq
            )),
            StoredHead::Keyed(head) if head.seq == entries && head.last != self.prev => {
                Err(format!("entry {entries} (the last) is not the entry recorded as the last"))
            }
            StoredHead::Keyed(_) => Ok(()),
        }
    }
}

/// Why a verification did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The log is not what was written (an entry edited, removed, inserted, reordered, cut).
    #[error("{0}")]
    Tampered(String),
    /// The log could not be read (a store or file I/O error): nothing was concluded about it.
    #[error("{0}")]
    Unreadable(String),
}

impl From<String> for VerifyError {
    fn from(problem: String) -> Self {
        VerifyError::Tampered(problem)
    }
}

/// Walks every line of every file and checks the recorded head; names the first problem.
/// Lines after the recorded head pass only if they verify: a batch being written.
pub fn verify(dir: &Path, key: &Key, head: &StoredHead) -> Result<Verified, VerifyError> {
    let files = log_files(dir).map_err(|e| VerifyError::Unreadable(format!("cannot list {}: {e}", dir.display())))?;
    let mut walk = Walk::new(key);
    for file in &files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(file).map_err(|e| match e.kind() {
            // Bytes that are not text were not written by the vault.
            std::io::ErrorKind::InvalidData => VerifyError::Tampered(format!("{name} is not text")),
            _ => VerifyError::Unreadable(format!("cannot read {name}: {e}")),
        })?;
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(format!("{name}: the last line is cut short").into());
        }
        for (index, line) in text.lines().enumerate() {
            walk.step(line, &format!("{name} line {}", index + 1))?;
        }
    }
    walk.finish(head)?;
    Ok(Verified { entries: walk.entries(), files: files.len() as u32, chains: 0, links: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_line_opens_and_any_change_fails() {
        let key = Key::random();
        let entry = AuditEntry { seq: 3, prev: genesis(&key), ..AuditEntry::now("read").actor("node:n1") };
        let (line, mac) = seal_line(&key, entry.clone());
        assert!(line.ends_with(&format!(",\"mac\":\"{mac}\"}}")));
        let (opened, opened_mac) = open_line(&key, &line).unwrap();
        assert_eq!((opened.seq, opened.actor.as_deref(), opened_mac), (3, Some("node:n1"), mac.clone()));
        assert_eq!(open_line(&key, &line.replace("node:n1", "node:n2")), Err(LineError::BadMac));
        assert_eq!(open_line(&Key::random(), &line), Err(LineError::BadMac));
        let unkeyed = serde_json::to_string(&entry).unwrap();
        assert_eq!(open_line(&key, &unkeyed), Err(LineError::Unkeyed));
    }

    #[test]
    fn heads_are_keyed_and_unkeyed_heads_are_recognised() {
        let key = Key::random();
        let head = Head::sealed(&key, 7, "ab");
        assert!(head.is_authentic(&key));
        assert!(!Head { seq: 8, ..head.clone() }.is_authentic(&key));
        assert!(!head.is_authentic(&Key::random()));
        let json = serde_json::to_vec(&head).unwrap();
        assert_eq!(StoredHead::parse(Some(&json)), StoredHead::Keyed(head));
        assert_eq!(StoredHead::parse(Some(br#"{"seq":3,"hash":"00"}"#)), StoredHead::Unkeyed);
        assert_eq!(StoredHead::parse(Some(b"junk")), StoredHead::Unreadable);
        assert_eq!(StoredHead::parse(None), StoredHead::None);
    }
}
