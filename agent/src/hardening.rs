//! Process hardening for the agent, which holds plaintext: no core dumps, pages locked.

/// No core dumps (and `/proc/PID/mem` closed to non-root peers); memory locked so plaintext is
/// never swapped out, where the system allows it. Failures are reported, not fatal.
pub fn harden() {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "could not mark the process non-dumpable");
    }
    if let Err(e) = setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }) {
        tracing::warn!(error = %e, "could not set the core size limit to zero");
    }
    use rustix::mm::{MlockAllFlags, mlockall};
    if let Err(e) = mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE) {
        tracing::warn!(error = %e, "could not lock memory: plaintext may be swapped out");
    }
}
