//! PID 1 of a task's PID namespace (`hush-agent task-init`, started by `hush run`): mounts the
//! namespace's own `/proc`, drops the capabilities the task does not keep, runs the command, passes
//! it the signals `hush run` forwards, reaps orphans, and exits with the command's status.
//!
//! Being the namespace's init is what bounds the task's life: when this process exits (the command
//! ended) or is killed (it dies with `hush run`, by `PR_SET_PDEATHSIG`), the kernel kills every
//! process left in the namespace, daemonised children included.

use crate::caps;
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};

/// Signals `hush run` forwards to the task (through this process).
pub const FORWARDED: [Signal; 6] = [Signal::TERM, Signal::INT, Signal::HUP, Signal::QUIT, Signal::USR1, Signal::USR2];

/// Exit status when the init itself fails before the command runs (as `docker run`'s 125).
pub const INIT_FAILED: i32 = 125;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Capabilities the task keeps, as a hexadecimal bit set
    #[arg(long, value_parser = parse_hex)]
    pub caps: u64,
    /// Set no_new_privs before running the command
    #[arg(long)]
    pub no_new_privs: bool,
    /// Read end of a pipe whose write end `hush run` holds: end of file means it is gone
    #[arg(long)]
    pub parent_fd: i32,
    /// Command and arguments
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

fn parse_hex(text: &str) -> Result<u64, std::num::ParseIntError> {
    u64::from_str_radix(text, 16)
}

/// Runs the task to its end; returns the exit status to leave with.
pub fn run(args: InitArgs) -> i32 {
    let _ = rustix::thread::set_name(c"hush-init");
    match supervise(args) {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("error: hush run: {message}");
            code
        }
    }
}

fn supervise(args: InitArgs) -> Result<i32, (i32, String)> {
    let failed = |what: &str, e: &dyn std::fmt::Display| (INIT_FAILED, format!("{what}: {e}"));
    // Blocked before anything can arrive, so none is lost: they are taken with sigwaitinfo below.
    let mut awaited: Vec<i32> = FORWARDED.iter().map(|s| s.as_raw()).collect();
    awaited.push(Signal::CHILD.as_raw());
    let signals = sigmask::Blocked::block(&awaited).map_err(|e| failed("cannot block signals", &e))?;

    // `hush run` died before our PR_SET_PDEATHSIG took effect: the pipe's write end is closed.
    if parent_gone(args.parent_fd).map_err(|e| failed("cannot read the parent pipe", &e))? {
        return Err((INIT_FAILED, "hush run is gone".into()));
    }

    // This namespace's processes only: a task cannot see, signal or trace another task's.
    rustix::mount::mount(
        "proc",
        "/proc",
        "proc",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV | rustix::mount::MountFlags::NOEXEC,
        c"",
    )
    .map_err(|e| failed("cannot mount the task's /proc", &e))?;
    let keep = rustix::thread::CapabilitySet::from_bits_truncate(args.caps);
    caps::restrict(keep, args.no_new_privs).map_err(|e| failed("cannot drop capabilities", &e))?;

    let program = &args.command[0];
    let mut command = std::process::Command::new(program);
    command.args(&args.command[1..]);
    // The command starts with no signal blocked (std leaves the mask as it is).
    signals.unblocked_in(&mut command);
    let child = command.spawn().map_err(|e| {
        // As shells and `docker run` report them: 127 not found, 126 not executable.
        let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
        (code, format!("cannot run {}: {}", program.to_string_lossy(), without_os_error(&e)))
    })?;
    let child = Pid::from_raw(child.id() as i32).expect("a child has a positive pid");

    loop {
        let signal = signals.wait().map_err(|e| failed("waiting for signals", &e))?;
        if signal != Signal::CHILD.as_raw() {
            if let Some(signal) = FORWARDED.iter().find(|s| s.as_raw() == signal) {
                let _ = rustix::process::kill_process(child, *signal);
            }
            continue;
        }
        // Reap every child that ended: the command, and orphans reparented to us.
        while let Ok(Some((pid, status))) = rustix::process::waitpid(None, WaitOptions::NOHANG) {
            if pid == child {
                return Ok(exit_code(status));
            }
        }
    }
}

/// A shell's reading of a status: the exit code, or 128 + the signal that killed it.
pub fn exit_code(status: WaitStatus) -> i32 {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        _ => INIT_FAILED,
    }
}

fn without_os_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Whether the write end of the pipe `fd` is closed (`hush run` is gone). Closes `fd`.
#[allow(unsafe_code)]
fn parent_gone(fd: i32) -> std::io::Result<bool> {
    // Only a descriptor that is open can be taken over.
    // SAFETY: borrowed for this one call, while nothing can close it.
    rustix::io::fcntl_getfd(unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) })?;
    // SAFETY: `fd` is open (checked above) and was handed to this process for this use only: nothing
    // else in this process, which has just started, owns it.
    let pipe = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::fs::fcntl_setfl(&pipe, rustix::fs::OFlags::NONBLOCK)?;
    match rustix::io::read(&pipe, &mut [0u8; 1]) {
        Ok(n) => Ok(n == 0),
        Err(rustix::io::Errno::AGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The signal mask and `sigwaitinfo`, which rustix does not offer.
#[allow(unsafe_code)]
mod sigmask {
    use std::io;

    pub struct Blocked(libc::sigset_t);

    impl Blocked {
        /// Blocks `signals` in this thread (the init is single-threaded: the whole process).
        pub fn block(signals: &[i32]) -> io::Result<Self> {
            // SAFETY: sigset_t is plain data, initialised by sigemptyset before any other use; the
            // pointers passed are to that local set and a null old-mask pointer, which is allowed.
            unsafe {
                let mut set = std::mem::zeroed::<libc::sigset_t>();
                libc::sigemptyset(&mut set);
                for signal in signals {
                    libc::sigaddset(&mut set, *signal);
                }
                match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                    0 => Ok(Self(set)),
                    errno => Err(io::Error::from_raw_os_error(errno)),
                }
            }
        }

        /// Has `command`'s child unblock every signal before it executes the program.
        pub fn unblocked_in(&self, command: &mut std::process::Command) {
            use std::os::unix::process::CommandExt;
            let hook = || {
                // SAFETY: as in `block`, on a local set; pthread_sigmask is async-signal-safe.
                let errno = unsafe {
                    let mut none = std::mem::zeroed::<libc::sigset_t>();
                    libc::sigemptyset(&mut none);
                    libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut())
                };
                if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(errno)) }
            };
            // SAFETY: the hook only calls sigemptyset and pthread_sigmask (no allocation, no lock),
            // which are safe between fork and exec.
            unsafe { command.pre_exec(hook) };
        }

        /// The next of the blocked signals (waits for one).
        pub fn wait(&self) -> io::Result<i32> {
            loop {
                // SAFETY: the set was initialised in `block`; a null siginfo pointer is allowed.
                let signal = unsafe { libc::sigwaitinfo(&self.0, std::ptr::null_mut()) };
                if signal >= 0 {
                    return Ok(signal);
                }
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}
