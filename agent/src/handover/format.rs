//! The hand-over state: what a successor needs beyond the descriptors, written into a sealed
//! memfd (memory only, never a file; sealed so the successor reads exactly what was written).
//!
//! ```text
//! "HUSHSTAT" | version: u32 LE | metadata length: u64 LE | metadata (JSON) | contents
//! ```
//! The JSON metadata holds no plaintext: file contents are concatenated after it, in the order
//! of `content_lengths`, and the filesystem state refers to them by index.
//!
//! Versions: 1 had no `pid` and no `audit`; 2 adds them (the predecessor's pid, and the audit
//! events it had not delivered, an `AccessReport` in protobuf, base64). This build writes either
//! (the one a successor asks for) and reads both.

use hush_fuse::Plaintext;
use hush_fuse::handover::FsState;
use rustix::fs::{MemfdFlags, SealFlags};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::runtime::registry::ContainerTaskState;

/// The newest format this build writes and reads. Bump it on any change a predecessor's or
/// successor's reader would misread; a reader refuses versions it does not know.
pub const VERSION: u32 = 2;
/// The oldest format this build still reads and writes.
pub const OLDEST: u32 = 1;

const MAGIC: &[u8; 8] = b"HUSHSTAT";
const HEADER: usize = 8 + 4 + 8;
/// Metadata larger than this is refused (100,000 tasks' worth).
const MAX_METADATA: u64 = 1 << 30;

/// Everything but the descriptors and the contents.
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentState {
    /// Protocol version negotiated at `FUSE_INIT` (major, minor).
    pub fuse_version: (u32, u32),
    /// The filesystem's inodes, tasks and handles.
    pub fs: FsState,
    /// Task → service name (audit events name the service).
    pub services: HashMap<String, String>,
    /// Container tasks verified so far (not registered with the vault again).
    pub container_tasks: Vec<ContainerTaskState>,
    /// Length of each content, in order.
    pub content_lengths: Vec<u64>,
    /// How many hand-overs this mount has been through before this one.
    pub takeovers: u64,
    /// The predecessor's pid (version 2; 0 in version 1).
    #[serde(default)]
    pub pid: u32,
    /// Audit events the predecessor had not delivered ([`encode_events`]; version 2).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub audit: String,
}

/// Audit events as [`AgentState::audit`] holds them (no plaintext: names, paths, pids).
pub fn encode_events(events: &[hush_proto::v1::AccessEvent]) -> String {
    use base64::Engine;
    use prost::Message;
    if events.is_empty() {
        return String::new();
    }
    let report = hush_proto::v1::AccessReport { events: events.to_vec() };
    base64::engine::general_purpose::STANDARD.encode(report.encode_to_vec())
}

/// The events [`encode_events`] wrote.
pub fn decode_events(text: &str) -> Result<Vec<hush_proto::v1::AccessEvent>, FormatError> {
    use base64::Engine;
    use prost::Message;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| FormatError::Malformed(format!("audit events: {e}")))?;
    let report = hush_proto::v1::AccessReport::decode(bytes.as_slice())
        .map_err(|e| FormatError::Malformed(format!("audit events: {e}")))?;
    Ok(report.events)
}

/// A state that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Another version of the format: the reader does not know how to read it.
    #[error("hand-over format version {found}, this build reads versions {OLDEST} to {VERSION}")]
    Version { found: u32 },
    /// Not sealed, truncated, or not valid.
    #[error("malformed hand-over state: {0}")]
    Malformed(String),
    /// Reading or writing the memfd failed.
    #[error("hand-over state: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes the state and contents into a new memfd in format `version` (version 1 leaves out
/// what it did not have), then seals it against any change.
pub fn write(state: &AgentState, contents: &[Arc<Plaintext>], version: u32) -> Result<OwnedFd, FormatError> {
    if !(OLDEST..=VERSION).contains(&version) {
        return Err(FormatError::Version { found: version });
    }
    let mut metadata = serde_json::to_value(state).map_err(|e| FormatError::Malformed(e.to_string()))?;
    if version == 1
        && let Some(fields) = metadata.as_object_mut()
    {
        fields.remove("pid");
        fields.remove("audit");
    }
    let metadata = serde_json::to_vec(&metadata).map_err(|e| FormatError::Malformed(e.to_string()))?;
    let fd = rustix::fs::memfd_create("hush-handover", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(std::io::Error::from)?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&version.to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    write_all(&fd, &header)?;
    write_all(&fd, &metadata)?;
    for content in contents {
        write_all(&fd, content.expose_secret())?;
    }
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL)
        .map_err(std::io::Error::from)?;
    Ok(fd)
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = rustix::io::write(fd, bytes)?;
        bytes = &bytes[n..];
    }
    Ok(())
}

fn read_exact_at(fd: &OwnedFd, buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = rustix::io::pread(fd, &mut buf[done..], offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
        offset += n as u64;
    }
    Ok(())
}

/// Reads a state [`write`] made. The memfd must be sealed (nobody can change it under us) and
/// its size must be exactly what the header and lengths say.
pub fn read(fd: &OwnedFd) -> Result<(AgentState, Vec<Arc<Plaintext>>), FormatError> {
    let malformed = |what: &str| FormatError::Malformed(what.to_string());
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| malformed("not a memfd"))?;
    if !seals.contains(SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW) {
        return Err(malformed("the memfd is not sealed"));
    }
    let size = rustix::fs::fstat(fd).map_err(std::io::Error::from)?.st_size as u64;
    let mut header = [0u8; HEADER];
    read_exact_at(fd, &mut header, 0).map_err(|_| malformed("shorter than its header"))?;
    if &header[..8] != MAGIC {
        return Err(malformed("no HUSHSTAT header"));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if !(OLDEST..=VERSION).contains(&version) {
        return Err(FormatError::Version { found: version });
    }
    let meta_len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    if meta_len > MAX_METADATA || HEADER as u64 + meta_len > size {
        return Err(malformed("metadata length beyond the end"));
    }
    let mut metadata = vec![0u8; meta_len as usize];
    read_exact_at(fd, &mut metadata, HEADER as u64)?;
    let state: AgentState = serde_json::from_slice(&metadata).map_err(|e| FormatError::Malformed(e.to_string()))?;
    let total = state.content_lengths.iter().try_fold(HEADER as u64 + meta_len, |sum, len| sum.checked_add(*len));
    if total != Some(size) {
        return Err(malformed("contents do not add up to the memfd's size"));
    }
    let mut offset = HEADER as u64 + meta_len;
    let mut contents = Vec::with_capacity(state.content_lengths.len());
    for &len in &state.content_lengths {
        // Sized once: never grown, so no stray copy of the plaintext is left behind.
        let mut bytes = vec![0u8; len as usize];
        read_exact_at(fd, &mut bytes, offset)?;
        offset += len;
        contents.push(Arc::new(Plaintext::new(bytes)));
    }
    Ok((state, contents))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(lengths: Vec<u64>) -> AgentState {
        AgentState {
            fuse_version: (7, 45),
            fs: FsState::default(),
            services: HashMap::new(),
            container_tasks: Vec::new(),
            content_lengths: lengths,
            takeovers: 3,
            pid: 42,
            audit: encode_events(&[hush_proto::v1::AccessEvent { op: "open".into(), count: 7, ..Default::default() }]),
        }
    }

    #[test]
    fn round_trip_through_a_sealed_memfd() {
        let contents = vec![Arc::new(Plaintext::new(b"hunter2".to_vec())), Arc::new(Plaintext::new(Vec::new()))];
        let fd = write(&state(vec![7, 0]), &contents, VERSION).unwrap();
        // Sealed: the writer itself can change nothing any more.
        assert!(rustix::io::write(&fd, b"x").is_err());
        let (read_state, read_contents) = read(&fd).unwrap();
        assert_eq!((read_state.takeovers, read_state.pid), (3, 42));
        let events = decode_events(&read_state.audit).unwrap();
        assert_eq!((events[0].op.as_str(), events[0].count), ("open", 7));
        assert_eq!(read_contents[0].expose_secret(), b"hunter2");
        assert!(read_contents[1].is_empty());
    }

    #[test]
    fn version_1_is_still_written_and_read() {
        let contents = vec![Arc::new(Plaintext::new(b"hunter2".to_vec()))];
        let fd = write(&state(vec![7]), &contents, 1).unwrap();
        let mut header = [0u8; HEADER];
        read_exact_at(&fd, &mut header, 0).unwrap();
        assert_eq!(u32::from_le_bytes(header[8..12].try_into().unwrap()), 1);
        let (read_state, read_contents) = read(&fd).unwrap();
        // What version 1 did not have is left out, not misread.
        assert_eq!((read_state.pid, read_state.audit.as_str(), read_state.takeovers), (0, "", 3));
        assert_eq!(read_contents[0].expose_secret(), b"hunter2");
    }

    #[test]
    fn unknown_version_and_bad_sizes_are_refused() {
        let fd = rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&999u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        write_all(&fd, &bytes).unwrap();
        assert!(matches!(read(&fd), Err(FormatError::Malformed(m)) if m.contains("not sealed")));
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE).unwrap();
        let err = read(&fd).unwrap_err();
        assert_eq!(err.to_string(), "hand-over format version 999, this build reads versions 1 to 2");
        // Lengths that claim more than the memfd holds.
        let contents = vec![Arc::new(Plaintext::new(b"abc".to_vec()))];
        let fd = write(&state(vec![4]), &contents, VERSION).unwrap();
        assert!(matches!(read(&fd), Err(FormatError::Malformed(m)) if m.contains("add up")));
    }
}
