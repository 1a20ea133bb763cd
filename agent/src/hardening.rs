//! Process hardening for the agent, which holds plaintext: no core dumps, pages locked.

/// No core dumps (and `/proc/PID/mem` closed to non-root peers); memory locked on first touch
/// so plaintext is never swapped out, where the system allows it. Failures are reported, not
/// fatal.
pub fn harden() {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "could not mark the process non-dumpable");
    }
    if let Err(e) = setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }) {
        tracing::warn!(error = %e, "could not set the core size limit to zero");
    }
    use rustix::mm::{MlockAllFlags, mlockall};
    // ONFAULT: every page is locked as soon as it is touched (plaintext included, so it is never
    // swapped out), but reserved and untouched memory (thread stacks, allocator arenas) is not
    // faulted in up front, as plain CURRENT | FUTURE does: that made every thread's whole stack
    // resident.
    if let Err(e) = mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT) {
        tracing::warn!(error = %e, "could not lock memory: plaintext may be swapped out");
    }
}
