//! Reading a value from `FILE` or `-` (stdin) into a zeroizing buffer, within size limits.

use crate::model::{Kind, validate_size};
use crate::secret::SecretBytes;
use anyhow::{Context, bail};
use std::io::Read;

/// Reads at most one byte past the kind's limit, so a huge input is refused without being
/// held in memory.
pub fn read_value(kind: Kind, source: &str) -> anyhow::Result<SecretBytes> {
    let limit = kind.max_size() as u64 + 1;
    let mut buffer = zeroize::Zeroizing::new(Vec::new());
    if source == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut buffer).context("cannot read standard input")?;
    } else {
        let file = std::fs::File::open(source).with_context(|| format!("cannot read {source}"))?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            bail!("cannot read {source}: it is a directory");
        }
        file.take(limit).read_to_end(&mut buffer).with_context(|| format!("cannot read {source}"))?;
    }
    if buffer.len() as u64 == limit {
        bail!(
            "{kind} data is too large (more than {} bytes): a {kind} must be smaller than {} KiB",
            kind.max_size(),
            (kind.max_size() + 1) / 1024
        );
    }
    validate_size(kind, buffer.len())?;
    Ok(SecretBytes::new(std::mem::take(&mut *buffer)))
}
