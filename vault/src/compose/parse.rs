//! One compose file: YAML (anchors, aliases, merge keys `<<`) into a generic tree, interpolated,
//! then walked into a [`FileModel`], every type error named by its YAML path.
//!
//! YAML dialect: `mode: 0440` is octal, as the compose specification says (and as compose's
//! YAML library reads it), although YAML 1.2 would read decimal 440; serde-saphyr's
//! `legacy_octal_numbers` does exactly that for zero-prefixed integers. Booleans are YAML 1.2's
//! (`true`/`false`): `yes` is a string, as compose reads it. Duplicate keys are an error.

use super::interpolate::interpolate_tree;
use super::model::{FileModel, ObjectDef, ReferenceDef, ServiceDef};
use super::{ComposeError, Environment, Origin};
use crate::model::Kind;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Largest compose file read: far beyond any real one, small enough to refuse a mistake early.
const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Top-level keys of the compose specification that Hush accepts (and mostly ignores).
const TOP_LEVEL: &[&str] = &["version", "name", "services", "networks", "volumes", "secrets", "configs", "models"];

/// `a.b` (or `b` at the root).
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Reads and parses one file; returns the model and interpolation warnings.
pub fn parse_file(file: &Path, env: &Environment) -> Result<(FileModel, Vec<String>), ComposeError> {
    let (tree, warnings) = read_tree(file, env)?;
    let walker = Walker { file };
    Ok((walker.file_model(&tree)?, warnings))
}

/// Reads one file into its interpolated tree (everything in it, not only what Hush acts on).
pub fn read_tree(file: &Path, env: &Environment) -> Result<(Value, Vec<String>), ComposeError> {
    let meta =
        std::fs::metadata(file).map_err(|e| ComposeError::in_file(file, format!("cannot read: {}", io_reason(&e))))?;
    if meta.is_dir() {
        return Err(ComposeError::in_file(file, "cannot read: it is a directory"));
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err(ComposeError::in_file(file, format!("too large ({} bytes)", meta.len())));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| ComposeError::in_file(file, format!("cannot read: {}", io_reason(&e))))?;
    tree_of(file, &text, env)
}

/// `No such file or directory`, without the `(os error 2)` tail.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Parses the text of `file`.
pub fn parse_str(file: &Path, text: &str, env: &Environment) -> Result<(FileModel, Vec<String>), ComposeError> {
    let (tree, warnings) = tree_of(file, text, env)?;
    let walker = Walker { file };
    Ok((walker.file_model(&tree)?, warnings))
}

/// The interpolated tree of the text of `file`.
fn tree_of(file: &Path, text: &str, env: &Environment) -> Result<(Value, Vec<String>), ComposeError> {
    let options = serde_saphyr::options! {
        legacy_octal_numbers: true,
        strict_booleans: true,
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    let mut tree: Value = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| ComposeError::in_file(file, yaml_error(&e.to_string())))?;
    if tree.is_null() {
        tree = Value::Object(Map::new());
    }
    let mut warnings = Vec::new();
    interpolate_tree(&mut tree, env, file, "", &mut warnings)?;
    Ok((tree, warnings))
}

/// The parser's message on one line, without hints about the library's own options.
fn yaml_error(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.replace(", set DuplicateKeyPolicy in Options if acceptable", "")
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Walks the tree of one file, making errors that name it and the path.
struct Walker<'a> {
    file: &'a Path,
}

impl Walker<'_> {
    fn error(&self, path: &str, message: impl Into<String>) -> ComposeError {
        ComposeError::at(self.file, path, message)
    }

    fn origin(&self, path: &str) -> Origin {
        Origin { file: self.file.to_path_buf(), path: path.to_string() }
    }

    fn expected(&self, path: &str, what: &str, found: &Value) -> ComposeError {
        self.error(path, format!("expected {what}, found {}", describe(found)))
    }

    fn map<'v>(&self, path: &str, value: &'v Value) -> Result<&'v Map<String, Value>, ComposeError> {
        value.as_object().ok_or_else(|| self.expected(path, "a mapping", value))
    }

    /// A mapping, or null read as empty (`services:` with nothing under it).
    fn map_or_null<'v>(&self, path: &str, value: &'v Value) -> Result<Option<&'v Map<String, Value>>, ComposeError> {
        if value.is_null() { Ok(None) } else { self.map(path, value).map(Some) }
    }

    fn string(&self, path: &str, value: &Value) -> Result<String, ComposeError> {
        value.as_str().map(str::to_string).ok_or_else(|| self.expected(path, "a string", value))
    }

    /// Booleans, and the strings `true`/`false` that interpolation produces.
    fn boolean(&self, path: &str, value: &Value) -> Result<bool, ComposeError> {
        match value {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            other => Err(self.expected(path, "a boolean", other)),
        }
    }

    /// uid/gid: an integer or a string of digits (compose writes them as strings: "103").
    fn id(&self, path: &str, value: &Value) -> Result<u32, ComposeError> {
        let parsed = match value {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.parse().ok(),
            other => return Err(self.expected(path, "a number", other)),
        };
        parsed.ok_or_else(|| self.error(path, format!("invalid id {}: expected a number from 0 to 4294967295", value)))
    }

    /// A mode: an integer as YAML reads it (`0440` is octal, `288` decimal, `0o440` octal), or a
    /// string, always octal (`"0440"`, `"440"`, `"0o440"`), as compose reads strings.
    fn mode(&self, path: &str, value: &Value) -> Result<u32, ComposeError> {
        let parsed = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => {
                let digits = s.strip_prefix("0o").or_else(|| s.strip_prefix("0O")).unwrap_or(s);
                u64::from_str_radix(digits, 8).ok().filter(|_| !digits.starts_with(['+', '-']))
            }
            other => return Err(self.expected(path, "a mode (octal number or string)", other)),
        };
        match parsed {
            Some(mode) if mode <= 0o777 => Ok(mode as u32),
            _ => {
                Err(self
                    .error(path, format!("invalid mode {value}: expected permissions from 0000 to 0777, e.g. 0440")))
            }
        }
    }

    /// `labels:` as a mapping or a list of `KEY=VALUE`.
    fn labels(&self, path: &str, value: &Value) -> Result<BTreeMap<String, String>, ComposeError> {
        let mut labels = BTreeMap::new();
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    let at = join(path, key);
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => String::new(),
                        other => return Err(self.expected(&at, "a string", other)),
                    };
                    labels.insert(key.clone(), text);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let text = self.string(&format!("{path}[{i}]"), item)?;
                    let (k, v) = text.split_once('=').unwrap_or((&text, ""));
                    labels.insert(k.to_string(), v.to_string());
                }
            }
            other => return Err(self.expected(path, "a mapping or a list", other)),
        }
        if labels.keys().any(String::is_empty) {
            return Err(self.error(path, "a label key must not be empty"));
        }
        Ok(labels)
    }

    fn file_model(&self, tree: &Value) -> Result<FileModel, ComposeError> {
        let root = tree.as_object().ok_or_else(|| {
            ComposeError::in_file(self.file, format!("expected a mapping at the top level, found {}", describe(tree)))
        })?;
        let mut model = FileModel::default();
        for (key, value) in root {
            match key.as_str() {
                k if k.starts_with("x-") => {}
                "name" => model.name = Some(self.string("name", value)?),
                "secrets" | "configs" => {
                    let kind = if key == "secrets" { Kind::Secret } else { Kind::Config };
                    let defs = if kind == Kind::Secret { &mut model.secrets } else { &mut model.configs };
                    for (name, def) in self.map_or_null(key, value)?.into_iter().flatten() {
                        defs.insert(name.clone(), self.object_def(kind, &join(key, name), def)?);
                    }
                }
                "services" => {
                    for (name, service) in self.map_or_null(key, value)?.into_iter().flatten() {
                        model.services.insert(name.clone(), self.service(&join(key, name), service)?);
                    }
                }
                "include" => return Err(self.error(key, "include is not supported by hush: pass each file with -f")),
                k if TOP_LEVEL.contains(&k) => {}
                _ => return Err(self.error(key, "unknown top-level key")),
            }
        }
        Ok(model)
    }

    fn object_def(&self, kind: Kind, path: &str, value: &Value) -> Result<ObjectDef, ComposeError> {
        let map = self.map(path, value)?;
        let mut def = ObjectDef {
            file: None,
            environment: None,
            content: None,
            external: None,
            name: None,
            labels: BTreeMap::new(),
            origin: self.origin(path),
        };
        for (key, value) in map {
            let at = join(path, key);
            match key.as_str() {
                k if k.starts_with("x-") => {}
                "file" => def.file = Some(self.string(&at, value)?),
                "environment" => def.environment = Some(self.string(&at, value)?),
                "content" if kind == Kind::Config => def.content = Some(self.string(&at, value)?),
                "name" => def.name = Some(self.string(&at, value)?),
                "labels" => def.labels = self.labels(&at, value)?,
                "external" => match value {
                    // The legacy form `external: {name: NAME}`.
                    Value::Object(inner) => {
                        def.external = Some(true);
                        for (k, v) in inner {
                            match k.as_str() {
                                "name" => def.name = Some(self.string(&join(&at, k), v)?),
                                _ => return Err(self.error(&join(&at, k), "unsupported key: expected only name")),
                            }
                        }
                    }
                    other => def.external = Some(self.boolean(&at, other)?),
                },
                other => {
                    let supported = match kind {
                        Kind::Secret => "file, environment, external, name and labels",
                        Kind::Config => "file, content, environment, external, name and labels",
                    };
                    return Err(self.error(&at, format!("unsupported key {other:?}: a {kind} takes {supported}")));
                }
            }
        }
        Ok(def)
    }

    fn service(&self, path: &str, value: &Value) -> Result<ServiceDef, ComposeError> {
        let mut service = ServiceDef::default();
        for (key, value) in self.map_or_null(path, value)?.into_iter().flatten() {
            let at = join(path, key);
            match key.as_str() {
                "secrets" => service.secrets = Some(self.references(Kind::Secret, &at, value)?),
                "configs" => service.configs = Some(self.references(Kind::Config, &at, value)?),
                "deploy" => service.constraints = self.placement_constraints(&at, value)?,
                "extends" => {
                    return Err(
                        self.error(&at, "extends is not supported by hush: repeat the references or use anchors")
                    );
                }
                // image, ports, environment, ...: the container runtime's business.
                _ => {}
            }
        }
        Ok(service)
    }

    /// `deploy.placement.constraints`: a list of Swarm constraints (the rest of `deploy` is the
    /// container runtime's).
    fn placement_constraints(&self, path: &str, deploy: &Value) -> Result<Option<Vec<String>>, ComposeError> {
        let Some(placement) = self.map_or_null(path, deploy)?.and_then(|d| d.get("placement")) else { return Ok(None) };
        let path = join(path, "placement");
        let Some(constraints) = self.map_or_null(&path, placement)?.and_then(|p| p.get("constraints")) else {
            return Ok(None);
        };
        let path = join(&path, "constraints");
        let items = match constraints {
            Value::Null => return Ok(Some(Vec::new())),
            Value::Array(items) => items,
            other => return Err(self.expected(&path, "a list of constraints such as node.labels.role==db", other)),
        };
        let mut parsed = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let text = self.string(&at, item)?;
            let constraint = crate::spec::parse_constraint(&text).map_err(|e| self.error(&at, e.to_string()))?;
            parsed.push(constraint.to_string());
        }
        Ok(Some(parsed))
    }

    fn references(&self, kind: Kind, path: &str, value: &Value) -> Result<Vec<ReferenceDef>, ComposeError> {
        let items = match value {
            Value::Null => return Ok(Vec::new()),
            Value::Array(items) => items,
            other => return Err(self.expected(path, "a list", other)),
        };
        let mut references = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let mut reference = ReferenceDef {
                source: String::new(),
                target: None,
                uid: None,
                gid: None,
                mode: None,
                origin: self.origin(&at),
                source_path: at.clone(),
            };
            match item {
                Value::String(source) => reference.source = source.clone(),
                Value::Object(map) => {
                    for (key, value) in map {
                        let field = join(&at, key);
                        match key.as_str() {
                            k if k.starts_with("x-") => {}
                            "source" => {
                                reference.source = self.string(&field, value)?;
                                reference.source_path = field;
                            }
                            "target" => reference.target = Some(self.string(&field, value)?),
                            "uid" => reference.uid = Some(self.id(&field, value)?),
                            "gid" => reference.gid = Some(self.id(&field, value)?),
                            "mode" => reference.mode = Some(self.mode(&field, value)?),
                            other => {
                                return Err(self.error(
                                    &field,
                                    format!("unsupported key {other:?}: a {kind} reference takes source, target, uid, gid and mode"),
                                ));
                            }
                        }
                    }
                    if reference.source.is_empty() {
                        return Err(self.error(&join(&at, "source"), "source is required"));
                    }
                }
                other => return Err(self.expected(&at, "a name or a mapping", other)),
            }
            if reference.source.is_empty() {
                return Err(self.error(&at, "source is required"));
            }
            references.push(reference);
        }
        Ok(references)
    }
}
