//! Hush's in-memory FUSE filesystem: each task's secrets and configs served read-only from
//! memory, openable only from the task's own mount namespace, with every access audited.
//!
//! ```text
//! <mount root>/<task id>/<relative path>      e.g. /run/hush/web.1/secrets/db_password
//! ```
//!
//! The agent builds a [`SecretFs`], [`mount`]s it (after [`clean_stale_mount`]), then drives
//! it with [`SecretFs::add_task`], [`SecretFs::set_owner`], [`SecretFs::update_content`] and
//! [`SecretFs::remove_task`]. Access events flow to the channel given to
//! [`SecretFs::with_event_sink`].
//!
//! Layers: [`fs`] is the testable core and knows nothing of fuser; `adapter` is the only
//! module using fuser's API; [`mod@mount`] manages the mount's lifetime.
#![forbid(unsafe_code)]

mod adapter;
pub mod caller;
pub mod event;
pub mod fs;
pub mod mount;
pub mod secret;

pub use caller::{Caller, CallerResolver, ProcResolver, mount_namespace_of};
pub use event::{AccessEvent, AccessOp, DenyReason};
pub use fs::{FileKind, FileMeta, FileSpec, FsError, Invalidation, Invalidator, SecretFs, TaskError, TaskOwner};
pub use mount::{MountConfig, MountError, MountGuard, clean_stale_mount, mount, mount_with_config};
pub use secret::Plaintext;
