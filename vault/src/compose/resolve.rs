//! The merged model made concrete: the project name, every object's Hush name and value, every
//! service's references as Hush specs. All checks that need no vault happen here, so a deploy
//! fails before it changes anything, and `hush compose config` shows exactly what would deploy.
//!
//! Naming follows `docker stack deploy`: objects are `PROJECT_KEY` unless `name:` is given
//! (external ones are used by `name:` or their key), services are `PROJECT_SERVICE`, and a
//! reference without a target lands at `/run/secrets/KEY` (secrets) or `/KEY` (configs).

use super::model::{FileModel, ObjectDef, ReferenceDef};
use super::parse::io_reason;
use super::{ComposeError, Environment, Origin, PROJECT_LABEL};
use crate::model::{self, Kind};
use crate::secret::{SecretBytes, open_value_file};
use crate::spec::{self, Reference};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Where an object's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Resolved against the project directory.
    File(PathBuf),
    /// The variable's name.
    Environment(String),
    /// Inline (configs only); not secret, so `config` may show it.
    Content(String),
    /// Must exist in the vault already; never created, changed or removed by compose.
    External,
}

/// One top-level secret or config, named as Hush will store it.
#[derive(Debug, Clone)]
pub struct ObjectSpec {
    pub name: String,
    pub source: Source,
    /// As written, plus [`PROJECT_LABEL`] for objects the project owns.
    pub labels: BTreeMap<String, String>,
    pub origin: Origin,
}

/// One reference of a service, with its source already the Hush object name.
#[derive(Debug, Clone)]
pub struct ReferenceSpec {
    /// The compose key it refers to.
    pub key: String,
    pub reference: Reference,
}

impl ReferenceSpec {
    /// The `--secret`/`--config` SPEC the vault parses (checked to read back identically).
    pub fn spec_string(&self) -> String {
        let r = &self.reference;
        format!("source={},target={},uid={},gid={},mode=0{:o}", r.source, r.target, r.uid, r.gid, r.mode)
    }
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub secrets: Vec<ReferenceSpec>,
    pub configs: Vec<ReferenceSpec>,
    /// Placement constraints, canonical and without repeats.
    pub constraints: Vec<String>,
}

impl ServiceSpec {
    pub fn references(&self, kind: Kind) -> &[ReferenceSpec] {
        match kind {
            Kind::Secret => &self.secrets,
            Kind::Config => &self.configs,
        }
    }
}

/// What a compose project deploys. Holds no values.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: String,
    pub dir: PathBuf,
    pub secrets: BTreeMap<String, ObjectSpec>,
    pub configs: BTreeMap<String, ObjectSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
}

impl Project {
    pub fn objects(&self, kind: Kind) -> &BTreeMap<String, ObjectSpec> {
        match kind {
            Kind::Secret => &self.secrets,
            Kind::Config => &self.configs,
        }
    }

    /// The resolved model as `hush compose config` prints it: never a secret's value (file
    /// paths and variable names only); a config's inline `content` is shown, configs not being
    /// secret (as `hush config inspect` shows their data).
    pub fn to_json(&self) -> Value {
        let objects = |kind: Kind| -> Value {
            self.objects(kind)
                .iter()
                .map(|(key, o)| {
                    let mut v = json!({ "name": o.name });
                    match &o.source {
                        Source::File(path) => v["file"] = json!(path.display().to_string()),
                        Source::Environment(var) => v["environment"] = json!(var),
                        Source::Content(content) => v["content"] = json!(content),
                        Source::External => v["external"] = json!(true),
                    }
                    if !o.labels.is_empty() {
                        v["labels"] = json!(o.labels);
                    }
                    (key.clone(), v)
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let references = |list: &[ReferenceSpec]| -> Value {
            list.iter()
                .map(|r| {
                    json!({
                        "source": r.key,
                        "name": r.reference.source,
                        "target": r.reference.absolute_target(),
                        "uid": r.reference.uid.to_string(),
                        "gid": r.reference.gid.to_string(),
                        "mode": format!("0{:03o}", r.reference.mode),
                    })
                })
                .collect()
        };
        let services: serde_json::Map<_, _> = self
            .services
            .iter()
            .map(|(key, s)| {
                let mut v = json!({ "name": s.name });
                if !s.secrets.is_empty() {
                    v["secrets"] = references(&s.secrets);
                }
                if !s.configs.is_empty() {
                    v["configs"] = references(&s.configs);
                }
                if !s.constraints.is_empty() {
                    v["deploy"] = json!({ "placement": { "constraints": s.constraints } });
                }
                (key.clone(), v)
            })
            .collect();
        json!({ "name": self.name, "services": services, "secrets": objects(Kind::Secret), "configs": objects(Kind::Config) })
    }
}

/// The values of the objects a project owns, by kind and compose key. No `Debug` of contents.
#[derive(Debug, Default)]
pub struct Values {
    values: HashMap<(Kind, String), SecretBytes>,
}

impl Values {
    pub fn get(&self, kind: Kind, key: &str) -> Option<&SecretBytes> {
        self.values.get(&(kind, key.to_string()))
    }
}

/// A loaded project: what to deploy, the values, and interpolation warnings to show.
#[derive(Debug)]
pub struct Loaded {
    pub project: Project,
    pub values: Values,
    pub warnings: Vec<String>,
}

/// Compose's rule for project names: lowercase letters, digits, `-` and `_`, starting with a
/// letter or digit.
fn valid_project_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A directory name made into a project name, as compose normalises it.
pub fn normalize_project_name(name: &str) -> String {
    let lowered: String = name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        .collect();
    lowered.trim_start_matches(['-', '_']).to_string()
}

fn project_name(merged: &FileModel, dir: &Path, flag: Option<&str>) -> Result<String, ComposeError> {
    let invalid = |name: &str| {
        format!(
            "invalid project name {name:?}: use lowercase letters, digits, dashes and underscores, starting with a letter or digit"
        )
    };
    if let Some(name) = flag {
        return if valid_project_name(name) { Ok(name.to_string()) } else { Err(ComposeError::new(invalid(name))) };
    }
    if let Some(name) = &merged.name {
        return if valid_project_name(name) {
            Ok(name.clone())
        } else {
            Err(ComposeError::new(format!("name: {}", invalid(name))))
        };
    }
    let base = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = normalize_project_name(&base);
    if name.is_empty() {
        return Err(ComposeError::new(format!("cannot make a project name of directory {base:?}: pass -p PROJECT")));
    }
    Ok(name)
}

/// Makes the merged model concrete and reads every value.
pub fn resolve(merged: FileModel, dir: &Path, flag: Option<&str>, env: &Environment) -> Result<Loaded, ComposeError> {
    let name = project_name(&merged, dir, flag)?;
    let mut project = Project {
        name: name.clone(),
        dir: dir.to_path_buf(),
        secrets: BTreeMap::new(),
        configs: BTreeMap::new(),
        services: BTreeMap::new(),
    };
    let mut values = Values::default();
    for (kind, defs) in [(Kind::Secret, &merged.secrets), (Kind::Config, &merged.configs)] {
        for (key, def) in defs {
            let (spec, value) = object(kind, &name, key, def, dir, env)?;
            if let Some(value) = value {
                values.values.insert((kind, key.clone()), value);
            }
            match kind {
                Kind::Secret => project.secrets.insert(key.clone(), spec),
                Kind::Config => project.configs.insert(key.clone(), spec),
            };
        }
    }
    for (key, service) in &merged.services {
        let service_name = format!("{name}_{key}");
        let origin = Origin { file: first_file_of(service), path: format!("services.{key}") };
        model::validate_name(&service_name).map_err(|e| origin.error(format!("service name: {e}")))?;
        let mut constraints = service.constraints.clone().unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        constraints.retain(|c| seen.insert(c.clone()));
        let mut spec = ServiceSpec { name: service_name, secrets: Vec::new(), configs: Vec::new(), constraints };
        let mut targets: BTreeMap<String, ()> = BTreeMap::new();
        for (kind, list) in [(Kind::Secret, &service.secrets), (Kind::Config, &service.configs)] {
            for def in list.iter().flatten() {
                let resolved = reference(kind, def, &project)?;
                if targets.insert(resolved.reference.absolute_target(), ()).is_some() {
                    return Err(def.origin.error(format!(
                        "target {} is already used by another secret or config of this service",
                        resolved.reference.absolute_target()
                    )));
                }
                match kind {
                    Kind::Secret => spec.secrets.push(resolved),
                    Kind::Config => spec.configs.push(resolved),
                }
            }
        }
        project.services.insert(key.clone(), spec);
    }
    Ok(Loaded { project, values, warnings: Vec::new() })
}

/// The file of a service's first reference, for errors about the service as a whole.
fn first_file_of(service: &super::model::ServiceDef) -> PathBuf {
    service.secrets.iter().chain(&service.configs).flatten().map(|r| r.origin.file.clone()).next().unwrap_or_default()
}

fn object(
    kind: Kind,
    project: &str,
    key: &str,
    def: &ObjectDef,
    dir: &Path,
    env: &Environment,
) -> Result<(ObjectSpec, Option<SecretBytes>), ComposeError> {
    let at = |field: &str| Origin { file: def.origin.file.clone(), path: format!("{}.{field}", def.origin.path) };
    let external = def.external.unwrap_or(false);
    let name = match (&def.name, external) {
        (Some(name), _) => name.clone(),
        (None, true) => key.to_string(),
        (None, false) => format!("{project}_{key}"),
    };
    let name_origin = if def.name.is_some() { at("name") } else { def.origin.clone() };
    model::validate_name(&name).map_err(|e| name_origin.error(e.to_string()))?;
    let given: Vec<&str> =
        [("file", def.file.is_some()), ("environment", def.environment.is_some()), ("content", def.content.is_some())]
            .into_iter()
            .filter_map(|(field, set)| set.then_some(field))
            .collect();
    if external {
        if let Some(field) = given.first().copied().or(if def.labels.is_empty() { None } else { Some("labels") }) {
            return Err(at(field).error(format!("an external {kind} takes only name: it is not created by compose")));
        }
        let spec = ObjectSpec { name, source: Source::External, labels: BTreeMap::new(), origin: def.origin.clone() };
        return Ok((spec, None));
    }
    let field = match given.as_slice() {
        [] => {
            let choices = match kind {
                Kind::Secret => "file, environment or external",
                Kind::Config => "file, content, environment or external",
            };
            return Err(def.origin.error(format!("a {kind} needs one of {choices}")));
        }
        [field] => *field,
        [first, second, ..] => {
            return Err(at(second).error(format!("{first} and {second} are exclusive: give one source per {kind}")));
        }
    };
    let (source, value) = if let Some(written) = &def.file {
        let path: PathBuf = dir.join(written).components().collect();
        let value = read_limited(kind, &path).map_err(|e| at(field).error(e))?;
        (Source::File(path), value)
    } else if let Some(var) = &def.environment {
        let value = env.get(var).ok_or_else(|| at(field).error(format!("environment variable {var} is not set")))?;
        (Source::Environment(var.clone()), SecretBytes::new(value.as_bytes().to_vec()))
    } else {
        let content = def.content.clone().unwrap_or_default();
        let value = SecretBytes::new(content.as_bytes().to_vec());
        (Source::Content(content), value)
    };
    model::validate_size(kind, value.len()).map_err(|e| at(field).error(e.to_string()))?;
    let mut labels = def.labels.clone();
    labels.insert(PROJECT_LABEL.to_string(), project.to_string());
    Ok((ObjectSpec { name, source, labels, origin: def.origin.clone() }, Some(value)))
}

/// Reads a value file, at most one byte past the kind's limit.
fn read_limited(kind: Kind, path: &Path) -> Result<SecretBytes, String> {
    open_value_file(path)
        .and_then(|file| SecretBytes::read_at_most(file, kind.max_size() as u64 + 1))
        .map_err(|e| format!("cannot read {}: {}", path.display(), io_reason(&e)))
}

fn reference(kind: Kind, def: &ReferenceDef, project: &Project) -> Result<ReferenceSpec, ComposeError> {
    let source_origin = Origin { file: def.origin.file.clone(), path: def.source_path.clone() };
    let object = project.objects(kind).get(&def.source).ok_or_else(|| {
        source_origin.error(format!("{kind} {:?} is not declared in the top-level {kind}s", def.source))
    })?;
    // A relative config target is relative to / (as Docker places it, and as the vault reads it).
    let target = match (kind, def.target.clone()) {
        (Kind::Config, Some(target)) if !target.starts_with('/') => format!("/{target}"),
        (_, Some(target)) => target,
        (Kind::Secret, None) => def.source.clone(),
        (Kind::Config, None) => format!("/{}", def.source),
    };
    let target_origin = Origin { file: def.origin.file.clone(), path: format!("{}.target", def.origin.path) };
    let target_origin = if def.target.is_some() { target_origin } else { def.origin.clone() };
    if target.contains(',') {
        return Err(target_origin.error(format!("invalid target {target:?}: a comma is not allowed in targets")));
    }
    spec::validate_target(&target).map_err(|e| target_origin.error(e.to_string()))?;
    let resolved = ReferenceSpec {
        key: def.source.clone(),
        reference: Reference {
            source: object.name.clone(),
            target,
            uid: def.uid.unwrap_or(0),
            gid: def.gid.unwrap_or(0),
            mode: def.mode.unwrap_or(0o444),
        },
    };
    // The vault reads the SPEC string back: make sure it means exactly this.
    match spec::parse_reference(kind, &resolved.spec_string()) {
        Ok(read) if read == resolved.reference => Ok(resolved),
        Ok(_) => Err(def.origin.error("this reference cannot be expressed as a Hush reference")),
        Err(e) => Err(def.origin.error(e.to_string())),
    }
}
