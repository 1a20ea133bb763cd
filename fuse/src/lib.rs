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
//! Who may open a task's files is a [`TaskOwner`]: any [`OwnerCheck`] the agent brings, called
//! on every open. [`MountNamespaceOwner`] (processes in one mount namespace, held open) is the
//! one this crate provides.
//!
//! Layers: [`fs`] is the testable core and knows nothing of fuser, on the inode table (`tree`),
//! [`owner`] checks and [`event`]s; [`caller`] identifies the process behind a request;
//! `adapter` is the only module using fuser's API; [`mod@mount`] manages the mount's lifetime.
// Only `mnt_ns` needs `unsafe` (one ioctl), and says why there.
#![deny(unsafe_code)]

mod adapter;
pub mod caller;
pub mod event;
pub mod fs;
pub mod handover;
pub mod mnt_ns;
pub mod mount;
pub mod owner;
pub mod secret;
mod tree;

pub use caller::{CallerResolver, ProcResolver, RequestInfo, mount_namespace_of};
pub use event::{AccessEvent, AccessOp, DenyReason, EventReceiver, EventSender, EventSink, queue as event_queue};
pub use fs::{FileKind, FileMeta, FileSpec, FsError, Invalidation, Invalidator, Opened, SecretFs, TaskError};
pub use mnt_ns::MountNamespaceOwner;
pub use mount::{MountConfig, MountError, MountGuard, clean_stale_mount, mount, mount_with_config, resume};
pub use owner::{Caller, Decision, Identity, OwnerCheck, Tags, TaskOwner, ThreadProbe};
pub use secret::Plaintext;
