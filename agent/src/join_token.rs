//! Where the agent takes its join token from: a file only root can read (`--join-token-file`,
//! `-` for standard input) or the `HUSH_JOIN_TOKEN` environment variable, never the command
//! line, which every local user can read in `/proc/PID/cmdline`.

use anyhow::{Context, bail};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use zeroize::Zeroizing;

pub const ENV: &str = "HUSH_JOIN_TOKEN";
/// A token is about a hundred characters; anything much longer is not one.
const MAX_LEN: u64 = 4096;

/// The join token, if one was given.
pub fn read(file: Option<&Path>) -> anyhow::Result<Option<Zeroizing<String>>> {
    let from_env = std::env::var(ENV).ok().filter(|t| !t.trim().is_empty()).map(Zeroizing::new);
    let Some(path) = file else { return Ok(from_env) };
    if from_env.is_some() {
        bail!("a join token is given twice (--join-token-file and {ENV}): pass one");
    }
    let mut text = Zeroizing::new(String::new());
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_LEN)
            .read_to_string(&mut text)
            .context("cannot read the join token from standard input")?;
    } else {
        let shown = path.display();
        let file = std::fs::File::open(path).with_context(|| format!("cannot read the join token file {shown}"))?;
        let meta = file.metadata().with_context(|| format!("cannot read the join token file {shown}"))?;
        let mode = meta.permissions().mode();
        if meta.is_file() && mode & 0o077 != 0 {
            bail!(
                "the join token file {shown} can be read by other users (mode {:04o}): chmod 600 {shown}",
                mode & 0o7777
            );
        }
        file.take(MAX_LEN)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read the join token file {shown}"))?;
    }
    if text.trim().is_empty() {
        bail!("the join token file {} is empty", path.display());
    }
    Ok(Some(Zeroizing::new(text.trim().to_string())))
}
