//! Domain types of stored objects: kinds, IDs, names, size limits and metadata records.

use crate::crypto::fill_random;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Secrets and configs share storage and API; they differ in limits and visibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }

    /// Largest accepted value, as Docker: secrets < 500 KiB, configs < 1000 KiB.
    pub fn max_size(self) -> usize {
        match self {
            Kind::Secret => 500 * 1024 - 1,
            Kind::Config => 1000 * 1024 - 1,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const ID_LEN: usize = 25;
pub const MAX_NAME_LEN: usize = 64;

/// A new object ID: 25 lowercase base-36 characters from 128 random bits (36^25 > 2^128).
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    let mut n = u128::from_le_bytes(bytes);
    let mut id = [b'0'; ID_LEN];
    for slot in id.iter_mut().rev() {
        *slot = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(id.to_vec()).expect("base-36 digits are ASCII")
}

/// Could `s` be (a prefix of) an ID? Lowercase base-36 only.
pub fn is_id_prefix(s: &str) -> bool {
    !s.is_empty() && s.len() <= ID_LEN && s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error(
        "invalid name {0:?}: names must be 1 to 64 characters of [a-zA-Z0-9-_.], starting and ending with a letter or digit"
    )]
    Name(String),
    #[error("{kind} data is empty: a {kind} needs 1 to {max} bytes")]
    Empty { kind: Kind, max: usize },
    #[error("{kind} data is too large ({size} bytes): a {kind} must be smaller than {limit} KiB ({max} bytes at most)")]
    TooLarge { kind: Kind, size: usize, max: usize, limit: usize },
    #[error("invalid label {0:?}: the key must not be empty")]
    Label(String),
    #[error("too many labels ({0}): at most {MAX_LABELS} per object")]
    TooManyLabels(usize),
    #[error("label {key:?} is too long: keys are at most {MAX_LABEL_KEY} bytes, values at most {MAX_LABEL_VALUE}")]
    LabelTooLong { key: String },
    #[error("labels are too large ({0} bytes): at most {MAX_LABELS_BYTES} bytes of keys and values per object")]
    LabelsTooLarge(usize),
    #[error("label {key:?}: keys and values must not contain control characters")]
    LabelControl { key: String },
}

/// Label bounds. Docker sets none (swarmkit checks only an object's name; the size of a Raft
/// message is the only bound), so these are Hush's: generous for real use, small enough that
/// labels cannot inflate the store, `ls` or the audit log.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 256;
pub const MAX_LABEL_VALUE: usize = 4096;
pub const MAX_LABELS_BYTES: usize = 32 * 1024;

/// Names as Docker: `^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`, at most 64 characters.
pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    let bytes = name.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    let inner_ok = bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if name.len() <= MAX_NAME_LEN && edge_ok(bytes.first()) && edge_ok(bytes.last()) && inner_ok {
        Ok(())
    } else {
        Err(ValidationError::Name(name.to_string()))
    }
}

pub fn validate_size(kind: Kind, size: usize) -> Result<(), ValidationError> {
    let max = kind.max_size();
    if size == 0 {
        Err(ValidationError::Empty { kind, max })
    } else if size > max {
        Err(ValidationError::TooLarge { kind, size, max, limit: (max + 1) / 1024 })
    } else {
        Ok(())
    }
}

/// Labels of secrets, configs, services and nodes: non-empty keys, no control characters, and
/// the bounds above. A refused key is shown cut to 64 characters.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(ValidationError::TooManyLabels(labels.len()));
    }
    let shown = |key: &str| key.chars().take(64).collect::<String>();
    let mut total = 0;
    for (key, value) in labels {
        if key.is_empty() {
            return Err(ValidationError::Label(String::new()));
        }
        if key.len() > MAX_LABEL_KEY || value.len() > MAX_LABEL_VALUE {
            return Err(ValidationError::LabelTooLong { key: shown(key) });
        }
        if key.chars().chain(value.chars()).any(char::is_control) {
            return Err(ValidationError::LabelControl { key: shown(key) });
        }
        total += key.len() + value.len();
    }
    if total > MAX_LABELS_BYTES {
        return Err(ValidationError::LabelsTooLarge(total));
    }
    Ok(())
}

/// Docker's `ls` order (`sortorder.NaturalLess`): runs of digits compare as numbers (`item2`
/// before `item10`; with equal values fewer leading zeros first), everything else byte by byte;
/// digits sort before other bytes.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (da, db) = (a[i].is_ascii_digit(), b[j].is_ascii_digit());
        if da != db {
            return if da { Ordering::Less } else { Ordering::Greater };
        }
        if !da {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
            continue;
        }
        let digits = |s: &[u8], mut k: usize| {
            while k < s.len() && s[k] == b'0' {
                k += 1;
            }
            let start = k;
            while k < s.len() && s[k].is_ascii_digit() {
                k += 1;
            }
            (start, k)
        };
        let ((sa, ea), (sb, eb)) = (digits(a, i), digits(b, j));
        let order = (ea - sa).cmp(&(eb - sb)).then_with(|| a[sa..ea].cmp(&b[sb..eb])).then_with(|| sa.cmp(&sb));
        if order != Ordering::Equal {
            return order;
        }
        (i, j) = (ea, eb);
    }
    (a.len() - i).cmp(&(b.len() - j))
}

/// One sealed version of an object's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub size: u64,
}

/// What the store keeps about an object besides its sealed values. Metadata is not secret
/// (names and labels are shown by `ls`), so it is stored in the clear as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Oldest first; never empty.
    pub versions: Vec<VersionRecord>,
}

impl ObjectRecord {
    pub fn current_version(&self) -> u64 {
        self.versions.last().map_or(0, |v| v.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let labels = |n: usize, key_len: usize, value_len: usize| -> BTreeMap<String, String> {
            (0..n).map(|i| (format!("{i:0>key_len$}"), "v".repeat(value_len))).collect()
        };
        assert!(validate_labels(&labels(MAX_LABELS, 8, 400)).is_ok());
        assert_eq!(validate_labels(&labels(MAX_LABELS + 1, 8, 1)), Err(ValidationError::TooManyLabels(65)));
        assert!(matches!(validate_labels(&labels(1, MAX_LABEL_KEY + 1, 1)), Err(ValidationError::LabelTooLong { .. })));
        assert!(matches!(
            validate_labels(&labels(1, 8, MAX_LABEL_VALUE + 1)),
            Err(ValidationError::LabelTooLong { .. })
        ));
        assert!(matches!(validate_labels(&labels(10, 8, 4000)), Err(ValidationError::LabelsTooLarge(40080))));
        let control = BTreeMap::from([("k".to_string(), "a\u{1b}[2J".to_string())]);
        assert!(matches!(validate_labels(&control), Err(ValidationError::LabelControl { .. })));
    }

    #[test]
    fn ids_are_25_base36_chars_and_differ() {
        let a = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert!(is_id_prefix(&a));
        assert_ne!(a, new_id());
    }

    #[test]
    fn names_follow_docker_rules() {
        for ok in ["a", "db_password", "tls.key", "A-1", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "_a", "a_", "a b", "a/b", "é", &"x".repeat(65), ".a"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn natural_order_is_dockers() {
        let mut names = vec!["item10", "item2", "item1", "Item3", "item02", "a", "a0", "1b", "item", "b"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["1b", "Item3", "a", "a0", "b", "item", "item1", "item2", "item02", "item10"]);
        assert_eq!(natural_cmp("x", "x"), std::cmp::Ordering::Equal);
    }

    #[test]
    fn sizes_follow_docker_limits() {
        assert!(validate_size(Kind::Secret, 1).is_ok());
        assert!(validate_size(Kind::Secret, 511_999).is_ok());
        assert!(validate_size(Kind::Secret, 512_000).is_err());
        assert!(validate_size(Kind::Config, 1_023_999).is_ok());
        assert!(validate_size(Kind::Config, 1_024_000).is_err());
        assert_eq!(
            validate_size(Kind::Secret, 0).unwrap_err().to_string(),
            "secret data is empty: a secret needs 1 to 511999 bytes"
        );
        assert_eq!(
            validate_size(Kind::Secret, 600_000).unwrap_err().to_string(),
            "secret data is too large (600000 bytes): a secret must be smaller than 500 KiB (511999 bytes at most)"
        );
    }
}
