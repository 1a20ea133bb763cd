//! Process hardening for daemons that hold plaintext: no core dumps, no ptrace by peers.

/// Makes the process non-dumpable (no core file, `/proc/PID/mem` closed to non-root peers)
/// and sets the core size limit to zero. Failures are reported, not fatal.
pub fn disable_core_dumps() {
    if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "could not mark the process non-dumpable");
    }
    let zero = rustix::process::Rlimit { current: Some(0), maximum: Some(0) };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Core, zero) {
        tracing::warn!(error = %e, "could not set the core size limit to zero");
    }
}
