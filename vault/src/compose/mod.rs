//! Compose files (the compose specification's `secrets:`, `configs:` and the services' references
//! to them), turned into what Hush deploys: named objects with their values and services with
//! their references.
//!
//! The pipeline, one module per step:
//! [`env`] (process environment + `.env`) → [`parse`] (YAML → tree, [`interpolate`]d, walked into
//! a typed [`model::FileModel`] with a YAML path for every error) → [`merge`] (several `-f` files)
//! → [`resolve`] (names, checks, values read into zeroizing buffers) → [`deploy`] (the vault).
//! Everything before [`deploy`] is offline: `hush compose config` stops there.

pub mod deploy;
pub mod env;
pub mod interpolate;
pub mod merge;
pub mod model;
pub mod parse;
pub mod resolve;

use std::fmt;
use std::path::{Path, PathBuf};

pub use env::Environment;
pub use resolve::{Loaded, Project};

/// The label that marks objects and services as belonging to a compose project.
pub const PROJECT_LABEL: &str = "hush.compose.project";

/// A problem with a compose file: where (file, YAML path) and what, as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeError {
    /// The file as given on the command line.
    pub file: Option<String>,
    /// `services.web.secrets[1].source`.
    pub path: Option<String>,
    pub message: String,
}

impl ComposeError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { file: None, path: None, message: message.into() }
    }
    pub fn in_file(file: &Path, message: impl Into<String>) -> Self {
        Self { file: Some(file.display().to_string()), path: None, message: message.into() }
    }
    pub fn at(file: &Path, path: &str, message: impl Into<String>) -> Self {
        Self { file: Some(file.display().to_string()), path: Some(path.to_string()), message: message.into() }
    }
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in [&self.file, &self.path].into_iter().flatten() {
            write!(f, "{part}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ComposeError {}

/// Where a definition or reference was written: for errors found after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub path: String,
}

impl Origin {
    pub fn error(&self, message: impl Into<String>) -> ComposeError {
        ComposeError::at(&self.file, &self.path, message)
    }
}

/// What `hush compose deploy` and `config` are given.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `-f` files in order; the first one's directory is the project directory.
    pub files: Vec<PathBuf>,
    /// `-p`.
    pub project: Option<String>,
}

/// Reads, interpolates, merges and resolves the files; reads every value. Offline.
pub fn load(
    options: &LoadOptions,
    process_env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ComposeError> {
    let first = options.files.first().ok_or_else(|| ComposeError::new("no compose file given"))?;
    let dir = project_dir(first);
    let env = Environment::load(process_env, &dir)?;
    let mut models = Vec::with_capacity(options.files.len());
    let mut warnings = Vec::new();
    for file in &options.files {
        let (model, mut file_warnings) = parse::parse_file(file, &env)?;
        warnings.append(&mut file_warnings);
        models.push(model);
    }
    let merged = merge::merge(models);
    let mut loaded = resolve::resolve(merged, &dir, options.project.as_deref(), &env)?;
    warnings.dedup();
    loaded.warnings = warnings;
    Ok(loaded)
}

/// The files' interpolated trees merged (mappings key by key, a later file's value winning;
/// anything else replaced): what `hush compose config --for docker` rewrites. Offline.
pub fn load_tree(
    options: &LoadOptions,
    process_env: impl IntoIterator<Item = (String, String)>,
) -> Result<serde_json::Value, ComposeError> {
    let first = options.files.first().ok_or_else(|| ComposeError::new("no compose file given"))?;
    let env = Environment::load(process_env, &project_dir(first))?;
    let mut merged = serde_json::Value::Object(Default::default());
    for file in &options.files {
        let (tree, _) = parse::read_tree(file, &env)?;
        merge_tree(&mut merged, tree);
    }
    Ok(merged)
}

fn merge_tree(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge_tree(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// The directory of the first compose file, absolute: relative paths in every file resolve here,
/// as compose does, and its name is the default project name.
pub fn project_dir(first: &Path) -> PathBuf {
    let parent = first.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    parent.canonicalize().or_else(|_| std::path::absolute(parent)).unwrap_or_else(|_| parent.to_path_buf())
}

#[cfg(test)]
mod tests;
