//! A process that reads one file every 10 ms and prints each result (`ok VALUE` or `fail`), with every
//! line timestamped as it arrives: for watching what a task or container sees across an agent restart.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::wait_for;

/// The shell loop (POSIX sh and busybox sh): a fresh `cat` each time, so each read is a new open.
pub fn script(path: &str) -> String {
    format!("while :; do if v=$(cat {path} 2>/dev/null); then echo \"ok $v\"; else echo fail; fi; sleep 0.01; done")
}

/// One read as the loop printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    Ok(String),
    Fail,
}

/// A running loop and what it printed so far.
pub struct ReadLoop {
    pub child: Child,
    lines: Arc<Mutex<Vec<(Instant, Read)>>>,
    /// Run on drop (e.g. `docker rm -f NAME`).
    cleanup: Option<Command>,
}

impl ReadLoop {
    /// Starts `command` (which runs [`script`]) with its stdout read line by line.
    pub fn spawn(command: &mut Command) -> Self {
        // stderr is not read: a pipe nobody drains would block the loop once full.
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("loop starts");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                let read = match line.strip_prefix("ok ") {
                    Some(value) => Read::Ok(value.to_string()),
                    None => Read::Fail,
                };
                sink.lock().expect("lines").push((Instant::now(), read));
            }
        });
        Self { child, lines, cleanup: None }
    }

    /// Runs `command` when the loop is dropped.
    pub fn cleanup_with(mut self, command: Command) -> Self {
        self.cleanup = Some(command);
        self
    }

    /// Every read so far.
    pub fn reads(&self) -> Vec<(Instant, Read)> {
        self.lines.lock().expect("lines").clone()
    }

    /// When the loop first read `value` at or after `after` (waits up to [`crate::DEADLINE`]).
    pub fn wait_value(&self, value: &str, after: Instant) -> Instant {
        wait_for(&format!("the loop to read {value:?}"), || {
            self.reads()
                .into_iter()
                .find(|(at, read)| *at >= after && *read == Read::Ok(value.to_string()))
                .map(|(at, _)| at)
        })
    }

    /// The first failed read at or after `after`, then the first good one after that: the outage
    /// as the loop saw it (waits up to `deadline` for both).
    pub fn outage_after(&self, after: Instant, deadline: Duration) -> Option<Outage> {
        let start = Instant::now();
        loop {
            let reads = self.reads();
            let first_fail = reads.iter().position(|(at, read)| *at >= after && *read == Read::Fail);
            if let Some(fail) = first_fail
                && let Some(back) = reads[fail..].iter().position(|(_, read)| matches!(read, Read::Ok(_)))
            {
                let back = fail + back;
                return Some(Outage { first_fail: reads[fail].0, back: reads[back].0, failed_reads: back - fail });
            }
            if start.elapsed() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the loop's process is still the one started (it never exited).
    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

/// A loop's view of an outage.
#[derive(Clone, Copy, Debug)]
pub struct Outage {
    /// The first failed read.
    pub first_fail: Instant,
    /// The first good read after it.
    pub back: Instant,
    /// Failed reads in between.
    pub failed_reads: usize,
}

impl Drop for ReadLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut cleanup) = self.cleanup.take() {
            let _ = cleanup.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}
