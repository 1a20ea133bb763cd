//! The owner of a `hush run` task: processes in one mount namespace, which the owner holds open
//! so that its identity cannot be given to another namespace while the task lives.
//!
//! # Why an inode number compared here cannot be a reused one
//! Namespace inode numbers are reused once a namespace is freed (the kernel hands out the lowest
//! free number). A namespace is freed only when nothing refers to it; [`MountNamespaceOwner`]
//! keeps a file descriptor on it (`/proc/<pid>/ns/mnt`), so for as long as the owner lives the
//! number belongs to this namespace and to no other. A caller whose thread's namespace has the
//! same inode (on the one `nsfs` superblock every namespace lives on) is in this namespace.
//! The kernel's 64-bit namespace id (`NS_GET_MNTNS_ID`, Linux 6.9; never reused while the system
//! runs) is read once and recorded for logs and tests; on older kernels it is `None` and the held
//! descriptor alone makes the comparison safe. Reading the caller's id per open would cost an
//! `open` + `ioctl` + `close` (~3x a `readlink`, measured), for no added safety.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::event::DenyReason;
use crate::owner::{Caller, Decision, OwnerCheck};

/// `NS_GET_MNTNS_ID` = `_IOR(0xb7, 0x5, __u64)` (Linux 6.9, `linux/nsfs.h`).
const NS_GET_MNTNS_ID: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<u64>(0xb7, 0x5);

/// Processes whose calling thread is in one mount namespace, held open (see the module docs).
///
/// Host root is not in a task's namespace, so host root is refused too.
#[derive(Debug)]
pub struct MountNamespaceOwner {
    /// Keeps the namespace (and so its inode number) alive.
    _ns: OwnedFd,
    /// Inode number of the namespace on `nsfs`.
    ino: u64,
    /// The kernel's unique namespace id, when the kernel has one.
    id: Option<u64>,
}

impl MountNamespaceOwner {
    /// The mount namespace process `pid` is in now (`/proc/<pid>/ns/mnt`), held open.
    ///
    /// # Security
    /// The caller must know that `pid` is still the process it means (e.g. it is blocked in a
    /// call to us): a pid can be reused once its process has been reaped.
    pub fn of_process(pid: u32) -> io::Result<Self> {
        Self::open(&format!("/proc/{pid}/ns/mnt"))
    }

    /// The namespace of the file at `path` (an `ns/mnt` link), held open.
    pub fn open(path: &str) -> io::Result<Self> {
        let file = File::open(path)?;
        let ino = file.metadata()?.ino();
        let ns: OwnedFd = file.into();
        let id = namespace_id(&ns);
        Ok(Self { _ns: ns, ino, id })
    }

    /// A namespace descriptor handed over by another process (see [`crate::handover`]); fails
    /// unless it is a mount namespace.
    pub fn from_fd(ns: OwnedFd) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        let ino = rustix::fs::fstat(&ns)?.st_ino;
        // `mnt:[INODE]` is what the kernel names a mount namespace descriptor.
        let link = std::fs::read_link(format!("/proc/self/fd/{}", ns.as_raw_fd()))?;
        if link.to_str() != Some(format!("mnt:[{ino}]").as_str()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a mount namespace descriptor"));
        }
        let id = namespace_id(&ns);
        Ok(Self { _ns: ns, ino, id })
    }

    /// The held namespace descriptor (to pass it to a successor).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self._ns.as_fd()
    }

    /// Inode number of the namespace (as `/proc/<pid>/ns/mnt` shows it: `mnt:[INODE]`).
    pub fn inode(&self) -> u64 {
        self.ino
    }

    /// The kernel's 64-bit namespace id (Linux >= 6.9), never reused while the system runs.
    pub fn id(&self) -> Option<u64> {
        self.id
    }
}

/// `NS_GET_MNTNS_ID` of a mount namespace descriptor; `None` where the kernel lacks it.
fn namespace_id(ns: &impl AsFd) -> Option<u64> {
    // SAFETY: NS_GET_MNTNS_ID is a read ioctl whose kernel side writes exactly one __u64 into
    // the argument, which is what `Getter<_, u64>` provides.
    let getter = unsafe { rustix::ioctl::Getter::<NS_GET_MNTNS_ID, u64>::new() };
    // SAFETY: `ns` is a valid open descriptor for the duration of the call, and the opcode and
    // output type match (above). An fd of another kind answers ENOTTY.
    unsafe { rustix::ioctl::ioctl(ns, getter) }.ok()
}

impl OwnerCheck for MountNamespaceOwner {
    fn check(&self, caller: &Caller) -> Decision {
        let verdict = match caller.mount_namespace() {
            Ok(ino) if ino == self.ino => Ok(()),
            Ok(_) => Err(DenyReason::NotOwner),
            // The thread is gone or /proc failed: never guess.
            Err(_) => Err(DenyReason::UnknownCaller),
        };
        Decision { verdict, identity: caller.identity() }
    }

    fn as_namespace(&self) -> Option<&MountNamespaceOwner> {
        Some(self)
    }

    fn describe(&self) -> String {
        match self.id {
            Some(id) => format!("mount namespace {} (id {id})", self.ino),
            None => format!("mount namespace {}", self.ino),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_has_an_id_and_inode() {
        let me = MountNamespaceOwner::of_process(std::process::id()).expect("own namespace");
        assert_eq!(me.inode(), crate::mount_namespace_of(std::process::id()).unwrap());
        // Linux >= 6.9 (this project's machines run 6.18): the id is there.
        assert!(me.id().is_some(), "NS_GET_MNTNS_ID unavailable");
        let again = MountNamespaceOwner::of_process(std::process::id()).unwrap();
        assert_eq!(again.id(), me.id());
        assert!(namespace_id(&File::open("/proc/self/ns/net").unwrap()).is_none(), "not a mount namespace");
        assert!(MountNamespaceOwner::of_process(u32::MAX).is_err());
    }
}
