//! The vault's log: tracing to stderr, every line capped at [`MAX_LINE`] bytes.
//!
//! # Security
//! Callers control some logged fields (a joining host's name, an error naming what they sent).
//! Each event is formatted in full and then written once; the writer keeps the first
//! [`MAX_LINE`] bytes and replaces the rest with a marker, so no caller can make one line
//! longer than that, whatever the field or the call site.

use std::io::{IsTerminal, Write};
use tracing_subscriber::fmt::MakeWriter;

/// Longest log line kept whole, in bytes.
pub const MAX_LINE: usize = 4096;

/// Installs the subscriber: `HUSH_LOG` filters (default `warn,hush_vault=info`), stderr.
pub fn init() {
    tracing_subscriber::fmt()
        .with_writer(CappedStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,hush_vault=info")),
        )
        .init();
}

/// Makes one [`CappedLine`] per event.
struct CappedStderr;

impl<'a> MakeWriter<'a> for CappedStderr {
    type Writer = CappedLine<std::io::Stderr>;
    fn make_writer(&'a self) -> Self::Writer {
        CappedLine::new(std::io::stderr(), MAX_LINE)
    }
}

/// A writer for one event: passes the first `max` bytes, then writes one marker line end and
/// swallows the rest (reporting it written, so the formatter never retries).
pub struct CappedLine<W: Write> {
    inner: W,
    max: usize,
    written: usize,
    cut: usize,
}

impl<W: Write> CappedLine<W> {
    pub fn new(inner: W, max: usize) -> Self {
        Self { inner, max, written: 0, cut: 0 }
    }
}

impl<W: Write> Write for CappedLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.max.saturating_sub(self.written);
        if buf.len() <= room {
            self.inner.write_all(buf)?;
            self.written += buf.len();
        } else {
            self.inner.write_all(&buf[..room])?;
            self.written += room;
            self.cut += buf.len() - room;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for CappedLine<W> {
    fn drop(&mut self) {
        if self.cut > 0 {
            let _ = writeln!(self.inner, "…[log line cut: +{} bytes]", self.cut);
        }
        let _ = self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_cut_with_a_marker_and_a_short_one_passes() {
        let mut out = Vec::new();
        {
            let mut line = CappedLine::new(&mut out, 10);
            line.write_all(b"0123456789abcdef\n").unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "0123456789…[log line cut: +7 bytes]\n");
        let mut out = Vec::new();
        {
            let mut line = CappedLine::new(&mut out, 10);
            line.write_all(b"short\n").unwrap();
        }
        assert_eq!(out, b"short\n");
    }
}
