//! The capabilities a `hush run` task keeps: Docker's default set, changed by `--cap-add`/`--cap-drop`
//! as `docker run` reads them, and the call that restricts the current process to them.
//!
//! # Security
//! A task of one service runs as root beside tasks of other services. With every capability it
//! could `setns` into another task's mount namespace (`CAP_SYS_ADMIN`) or trace it (`CAP_SYS_PTRACE`),
//! and so read that task's files as the task itself. Docker's default set has neither.

use rustix::thread::CapabilitySet;

/// Docker's default capabilities (moby `oci/caps/defaults.go`; `docker run` here shows them as
/// `CapEff: 00000000a80425fb`).
pub fn docker_default() -> CapabilitySet {
    CapabilitySet::CHOWN
        | CapabilitySet::DAC_OVERRIDE
        | CapabilitySet::FSETID
        | CapabilitySet::FOWNER
        | CapabilitySet::MKNOD
        | CapabilitySet::NET_RAW
        | CapabilitySet::SETGID
        | CapabilitySet::SETUID
        | CapabilitySet::SETFCAP
        | CapabilitySet::SETPCAP
        | CapabilitySet::NET_BIND_SERVICE
        | CapabilitySet::SYS_CHROOT
        | CapabilitySet::KILL
        | CapabilitySet::AUDIT_WRITE
}

/// A capability name that is not one.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    #[error("unknown capability: \"{0}\" (names as in capabilities(7), with or without CAP_, or ALL)")]
    Unknown(String),
    #[error("cannot {step}: {source}")]
    Apply { step: &'static str, source: std::io::Error },
}

/// One `--cap-add`/`--cap-drop` value: a capability, or `ALL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    All,
    One(CapabilitySet),
}

/// Docker's reading of a name: any case, `CAP_` optional (`sys_admin`, `CAP_SYS_ADMIN`), or `ALL`.
fn parse(name: &str) -> Result<Name, CapError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Ok(Name::All);
    }
    CapabilitySet::from_name(bare).map(Name::One).ok_or_else(|| CapError::Unknown(name.to_string()))
}

/// The set a task keeps, as moby's `TweakCapabilities` computes it: `--privileged` keeps
/// everything (`all`: what this process may still hold); `--cap-add ALL` keeps everything but the
/// drops; `--cap-drop ALL` keeps only the adds; otherwise the defaults minus the drops plus the adds.
pub fn resolve(
    adds: &[String],
    drops: &[String],
    privileged: bool,
    all: CapabilitySet,
) -> Result<CapabilitySet, CapError> {
    let adds = adds.iter().map(|n| parse(n)).collect::<Result<Vec<_>, _>>()?;
    let drops = drops.iter().map(|n| parse(n)).collect::<Result<Vec<_>, _>>()?;
    if privileged {
        return Ok(all);
    }
    let union = |names: &[Name]| {
        names.iter().fold(CapabilitySet::empty(), |set, n| match n {
            Name::All => all,
            Name::One(one) => set | *one,
        })
    };
    let keep = if adds.contains(&Name::All) {
        all - union(&drops)
    } else if drops.contains(&Name::All) {
        union(&adds)
    } else {
        (docker_default() - union(&drops)) | union(&adds)
    };
    Ok(keep & all)
}

/// Every capability this process could still hold: its bounding set.
pub fn bounding_set() -> CapabilitySet {
    CapabilitySet::all()
        .iter()
        .filter(|cap| rustix::thread::capability_is_in_bounding_set(*cap).unwrap_or(false))
        .fold(CapabilitySet::empty(), |set, cap| set | cap)
}

/// Restricts this process (and whatever it executes) to `keep`: every other capability leaves the
/// bounding set, so root cannot regain it by `execve`; the permitted and effective sets become
/// `keep`, inheritable and ambient are emptied (as Docker does since 20.10.14); with
/// `no_new_privs`, set-user-ID binaries and file capabilities grant nothing either.
pub fn restrict(keep: CapabilitySet, no_new_privs: bool) -> Result<(), CapError> {
    let fail = |step| move |e: rustix::io::Errno| CapError::Apply { step, source: e.into() };
    for cap in CapabilitySet::all().iter() {
        if !keep.contains(cap) && rustix::thread::capability_is_in_bounding_set(cap).unwrap_or(false) {
            rustix::thread::remove_capability_from_bounding_set(cap)
                .map_err(fail("drop a capability from the bounding set"))?;
        }
    }
    rustix::thread::clear_ambient_capability_set().map_err(fail("clear the ambient capabilities"))?;
    let sets = rustix::thread::CapabilitySets { effective: keep, permitted: keep, inheritable: CapabilitySet::empty() };
    rustix::thread::set_capabilities(None, sets).map_err(fail("set the capabilities"))?;
    if no_new_privs {
        rustix::thread::set_no_new_privs(true).map_err(fail("set no_new_privs"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: CapabilitySet) -> Vec<&'static str> {
        set.iter_names().map(|(name, _)| name).collect()
    }

    fn keep(adds: &[&str], drops: &[&str]) -> Result<CapabilitySet, CapError> {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        resolve(&owned(adds), &owned(drops), false, CapabilitySet::all())
    }

    #[test]
    fn the_default_is_dockers() {
        assert_eq!(docker_default().bits(), 0xa80425fb);
        assert_eq!(keep(&[], &[]).unwrap(), docker_default());
    }

    #[test]
    fn adds_and_drops_read_as_docker_reads_them() {
        let set = keep(&["sys_admin", "CAP_SYS_PTRACE"], &["NET_RAW", "cap_mknod"]).unwrap();
        assert!(set.contains(CapabilitySet::SYS_ADMIN | CapabilitySet::SYS_PTRACE));
        assert!(!set.intersects(CapabilitySet::NET_RAW | CapabilitySet::MKNOD));
        // As `docker run --cap-add SYS_ADMIN --cap-drop NET_RAW` shows: CapEff 00000000a82405fb.
        assert_eq!(keep(&["SYS_ADMIN"], &["NET_RAW"]).unwrap().bits(), 0xa82405fb);
        assert_eq!(names(keep(&["SYS_ADMIN"], &["ALL"]).unwrap()), ["SYS_ADMIN"]);
        assert_eq!(keep(&["ALL"], &["SYS_ADMIN"]).unwrap(), CapabilitySet::all() - CapabilitySet::SYS_ADMIN);
        assert_eq!(keep(&[], &["all"]).unwrap(), CapabilitySet::empty());
        // An add wins over a drop of the same capability, as in `docker run` here (CapEff a82425fb).
        assert_eq!(keep(&["SYS_ADMIN"], &["SYS_ADMIN"]).unwrap().bits(), 0xa82425fb);
        assert_eq!(keep(&["NET_ADMIN"], &["ALL"]).unwrap().bits(), 0x1000);
    }

    #[test]
    fn unknown_names_are_refused_and_privileged_keeps_what_is_held() {
        let err = keep(&["bogus"], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown capability: \"bogus\" (names as in capabilities(7), with or without CAP_, or ALL)"
        );
        let held = docker_default() | CapabilitySet::SYS_ADMIN;
        assert_eq!(resolve(&[], &[], true, held).unwrap(), held);
        // Nothing beyond what the process holds, even asked for.
        assert_eq!(resolve(&["ALL".into()], &[], false, held).unwrap(), held);
    }
}
