//! Reading a value from `FILE` or `-` (stdin) into a zeroizing buffer, within size limits.

use crate::model::{Kind, validate_size};
use crate::secret::{SecretBytes, open_value_file};
use anyhow::{Context, bail};

/// Reads at most one byte past the kind's limit, so a huge input is refused without being
/// held in memory.
pub fn read_value(kind: Kind, source: &str) -> anyhow::Result<SecretBytes> {
    let limit = kind.max_size() as u64 + 1;
    let value = if source == "-" {
        SecretBytes::read_at_most(std::io::stdin().lock(), limit).context("cannot read standard input")?
    } else {
        open_value_file(std::path::Path::new(source))
            .and_then(|file| SecretBytes::read_at_most(file, limit))
            .with_context(|| format!("cannot read {source}"))?
    };
    if value.len() as u64 == limit {
        bail!(
            "{kind} data is too large (more than {} bytes): a {kind} must be smaller than {} KiB",
            kind.max_size(),
            (kind.max_size() + 1) / 1024
        );
    }
    validate_size(kind, value.len())?;
    Ok(value)
}
