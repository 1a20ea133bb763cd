//! The temp dir of one `hush dev` (vault data with the CA key and the admin bundle, the agent's
//! state, its FUSE mount): locked while its `hush dev` lives, removed when it stops, and, when a
//! `hush dev` was killed before it could remove it, removed by the next `hush dev` to start.

use anyhow::Context;
use rustix::fs::{FlockOperation, flock};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Name prefix of live dev dirs in the temp directory; a dir is renamed to it only once locked.
const PREFIX: &str = "hush-dev-";
/// The lock file inside: held (flock) by the owning `hush dev` for its whole life, released by the
/// kernel however it ends, so a dir whose lock can be taken has no owner left.
const LOCK: &str = "hush-dev.lock";

pub struct DevDir {
    path: PathBuf,
    _lock: File,
}

impl DevDir {
    /// Makes a new dev dir under the system temp directory, locked by this process.
    pub fn create() -> anyhow::Result<Self> {
        // Made under another name, locked, then renamed: a starting `hush dev` never sees a dir of
        // this prefix that is not locked yet, so it cannot mistake a new one for a leftover.
        let staging =
            tempfile::Builder::new().prefix(".hush-dev-new-").tempdir().context("cannot create a temp dir")?;
        let lock = File::create(staging.path().join(LOCK)).context("cannot create the dev dir's lock")?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive).context("cannot lock the dev dir")?;
        let staged = staging.keep();
        let name = staged.file_name().and_then(|n| n.to_str()).expect("tempfile names are UTF-8");
        let path = staged.with_file_name(format!("{PREFIX}{}", &name[".hush-dev-new-".len()..]));
        std::fs::rename(&staged, &path).context("cannot name the dev dir")?;
        Ok(Self { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the dev dirs of earlier `hush dev` processes that are gone (killed before they could
    /// clean up): their FUSE mount is detached first. Returns the paths removed.
    pub fn remove_leftovers(mount_dir: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let is_ours = entry.file_name().to_str().is_some_and(|n| n.starts_with(PREFIX));
            if !is_ours || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(lock) = File::open(path.join(LOCK)) else {
                continue;
            };
            if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
                continue; // its `hush dev` is alive
            }
            remove(&path, mount_dir);
            removed.push(path);
        }
        removed
    }
}

/// Detaches the agent's mount in a dev dir (a dead FUSE mount cannot even be stat'ed), then
/// removes the dir.
fn remove(path: &Path, mount_dir: &str) {
    let _ = rustix::mount::unmount(path.join(mount_dir), rustix::mount::UnmountFlags::DETACH);
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a dev dir");
    }
}

impl Drop for DevDir {
    fn drop(&mut self) {
        remove(&self.path, super::dev::MOUNT_DIR);
    }
}
