//! The parts of a compose file Hush acts on, as written in one file (every field optional, so an
//! override file can set only what it changes). Each item remembers where it was written.

use super::Origin;
use std::collections::BTreeMap;

/// One compose file after interpolation and type checks.
#[derive(Debug, Clone, Default)]
pub struct FileModel {
    /// Top-level `name:`.
    pub name: Option<String>,
    pub secrets: BTreeMap<String, ObjectDef>,
    pub configs: BTreeMap<String, ObjectDef>,
    pub services: BTreeMap<String, ServiceDef>,
}

/// A top-level secret or config definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDef {
    pub file: Option<String>,
    pub environment: Option<String>,
    /// Configs only.
    pub content: Option<String>,
    pub external: Option<bool>,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `secrets.KEY` in the file that last set a field.
    pub origin: Origin,
}

/// What Hush reads of a service: its secret and config references. `None` when the file does
/// not mention the list (so a merge keeps the base's).
#[derive(Debug, Clone, Default)]
pub struct ServiceDef {
    pub secrets: Option<Vec<ReferenceDef>>,
    pub configs: Option<Vec<ReferenceDef>>,
    /// `deploy.placement.constraints`, each already checked (canonical spelling).
    pub constraints: Option<Vec<String>>,
}

/// One entry of a service's `secrets:` or `configs:` list, short or long syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceDef {
    /// The top-level key it refers to.
    pub source: String,
    pub target: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
    /// `services.web.secrets[1]`.
    pub origin: Origin,
    /// Where the source was written: the item itself in short syntax, `[1].source` in long.
    pub source_path: String,
}
