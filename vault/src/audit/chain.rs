//! The hash chain over the log files: each line carries the SHA-256 of the line before it, and
//! the store keeps the newest (seq, hash) so that removing lines at the end is detected too.

use super::entry::AuditEntry;
use crate::crypto::sha256_hex;
use std::path::{Path, PathBuf};

/// `prev` of the very first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The newest entry, as recorded beside the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// Log files in chain order (names carry the first sequence number, zero-padded).
pub fn log_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

pub fn file_name(first_seq: u64) -> String {
    format!("audit-{first_seq:012}.jsonl")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    pub files: u32,
}

/// Walks every line of every file; names the first entry that breaks the chain.
pub fn verify(dir: &Path, head: Option<&Head>) -> Result<Verified, String> {
    let files = log_files(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut prev_hash = GENESIS.to_string();
    let mut expected_seq = 1;
    for file in &files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {name}: {e}"))?;
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(format!("{name}: the last line is cut short"));
        }
        for (index, line) in text.lines().enumerate() {
            let at = format!("entry {expected_seq} ({name} line {})", index + 1);
            let entry: AuditEntry = serde_json::from_str(line).map_err(|e| format!("{at}: not a valid entry: {e}"))?;
            if entry.seq != expected_seq {
                return Err(format!("{at}: sequence number is {} (entries removed, inserted or reordered)", entry.seq));
            }
            if entry.prev != prev_hash {
                return Err(format!(
                    "{at}: does not follow the entry before it (that entry was altered, or entries were removed, inserted or reordered)"
                ));
            }
            prev_hash = sha256_hex(line.as_bytes());
            expected_seq += 1;
        }
    }
    let entries = expected_seq - 1;
    if let Some(head) = head {
        if head.seq > entries {
            return Err(format!(
                "the log ends at entry {entries} but entry {} was written: entries were removed from the end",
                head.seq
            ));
        }
        if head.seq == entries && head.hash != prev_hash {
            return Err(format!("entry {entries} (the last) was altered"));
        }
    }
    Ok(Verified { entries, files: files.len() as u32 })
}
