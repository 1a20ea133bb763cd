//! Docker's `--secret` / `--config` reference syntax: `NAME` or
//! `source=NAME,target=PATH,uid=N,gid=N,mode=0NNN`, and where the file lands in a task; and
//! Swarm's placement constraint syntax (`node.labels.role==db`), evaluated by [`crate::placement`].

use crate::model::Kind;
use serde::{Deserialize, Serialize};

/// Where secrets appear inside a task.
pub const SECRETS_DIR: &str = "/run/secrets";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid {kind} reference {spec:?}: {reason}")]
    Invalid { kind: Kind, spec: String, reason: String },
    #[error(
        "invalid mode {0:?}: write it in octal with a leading 0, e.g. 0{0} (Docker would silently read {0} as decimal)"
    )]
    DecimalMode(String),
    #[error("invalid mode {0:?}: expected octal permissions such as 0400 or 0o440")]
    Mode(String),
    #[error("target {0:?} escapes its directory: `..` is not allowed in targets")]
    Escape(String),
    #[error("invalid target {0:?}: expected a clean path without empty or `.` components")]
    Target(String),
    #[error("two references have the same target {0}")]
    DuplicateTarget(String),
    #[error("invalid constraint {spec:?}: {reason}")]
    Constraint { spec: String, reason: String },
}

/// One reference of a service to a secret or config, before its source is resolved to an ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub source: String,
    /// Secrets: as given (relative to `/run/secrets` or absolute); configs: always absolute (a
    /// relative config target is made absolute under `/` when parsed, as Docker places it).
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Reference {
    /// The path inside the task: relative secret targets land under `/run/secrets`.
    pub fn absolute_target(&self) -> String {
        if self.target.starts_with('/') { self.target.clone() } else { format!("{SECRETS_DIR}/{}", self.target) }
    }
}

/// Parses Docker's mode syntax: octal with a leading `0` or `0o`. A bare `400` is refused
/// with a hint instead of being read as decimal, as Docker's CLI does.
pub fn parse_mode(text: &str) -> Result<u32, SpecError> {
    let digits = if let Some(rest) = text.strip_prefix("0o").or_else(|| text.strip_prefix("0O")) {
        rest
    } else if let Some(rest) = text.strip_prefix('0') {
        if rest.is_empty() { "0" } else { rest }
    } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpecError::DecimalMode(text.to_string()));
    } else {
        return Err(SpecError::Mode(text.to_string()));
    };
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(SpecError::Mode(text.to_string())),
    }
}

/// Parses one `--secret` / `--config` value.
pub fn parse_reference(kind: Kind, spec: &str) -> Result<Reference, SpecError> {
    let invalid = |reason: &str| SpecError::Invalid { kind, spec: spec.to_string(), reason: reason.to_string() };
    let mut source = None;
    let mut target = None;
    let (mut uid, mut gid, mut mode) = (0, 0, 0o444);
    if !spec.contains('=') {
        source = Some(spec.to_string());
    } else {
        for field in spec.split(',') {
            let (key, value) =
                field.split_once('=').ok_or_else(|| invalid(&format!("field {field:?} is not key=value")))?;
            match key.trim().to_ascii_lowercase().as_str() {
                "source" | "src" => source = Some(value.to_string()),
                "target" => target = Some(value.to_string()),
                "uid" => uid = value.parse().map_err(|_| invalid(&format!("uid {value:?} is not a number")))?,
                "gid" => gid = value.parse().map_err(|_| invalid(&format!("gid {value:?} is not a number")))?,
                "mode" => mode = parse_mode(value)?,
                other => return Err(invalid(&format!("unknown field {other:?}"))),
            }
        }
    }
    let source = source.filter(|s| !s.is_empty()).ok_or_else(|| invalid("source is required"))?;
    // As Docker: a relative secret target is under /run/secrets, a relative config target under /.
    let target = match (kind, target.filter(|t| !t.is_empty())) {
        (Kind::Secret, Some(target)) => target,
        (Kind::Secret, None) => source.clone(),
        (Kind::Config, Some(target)) if target.starts_with('/') => target,
        (Kind::Config, Some(target)) => format!("/{target}"),
        (Kind::Config, None) => format!("/{source}"),
    };
    let reference = Reference { source, target, uid, gid, mode };
    validate_target(&reference.target)?;
    Ok(reference)
}

/// Targets are clean paths: no `..` (nothing may escape `/run/secrets` or be placed by
/// surprise), no empty or `.` components.
pub fn validate_target(target: &str) -> Result<(), SpecError> {
    let relative = target.strip_prefix('/').unwrap_or(target);
    if relative.split('/').any(|c| c == "..") {
        return Err(SpecError::Escape(target.to_string()));
    }
    if relative.is_empty() || relative.split('/').any(|c| c.is_empty() || c == ".") || target.contains('\0') {
        return Err(SpecError::Target(target.to_string()));
    }
    Ok(())
}

/// Two references may not land on the same path in a task (secrets and configs together).
pub fn check_unique_targets<'a>(references: impl IntoIterator<Item = &'a Reference>) -> Result<(), SpecError> {
    let mut seen = std::collections::HashSet::new();
    for reference in references {
        let target = reference.absolute_target();
        if !seen.insert(target.clone()) {
            return Err(SpecError::DuplicateTarget(target));
        }
    }
    Ok(())
}

/// A node attribute a constraint can test: Swarm's, less those Hush nodes do not have.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// `node.id`
    Id,
    /// `node.hostname`: the name the node gave when it joined (its hostname).
    Hostname,
    /// `node.role`: always `worker` (the vault is the only manager and runs no tasks).
    Role,
    /// `node.platform.os`, as the node reported it at join.
    Os,
    /// `node.platform.arch`, as the node reported it at join.
    Arch,
    /// `node.labels.KEY`: set by admins only. The key is case-sensitive, as Swarm's.
    Label(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    Eq,
    Ne,
}

/// One placement constraint, `ATTRIBUTE==VALUE` or `ATTRIBUTE!=VALUE`. Stored and shown in its
/// canonical spelling (`node.labels.role==db`, no blanks), so ` node.labels.role == db ` and
/// `node.labels.role==db` are the same constraint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Constraint {
    pub attribute: Attribute,
    pub operator: Operator,
    /// Compared with the node's value ignoring ASCII case, as Swarm does.
    pub value: String,
}

const LABEL_PREFIX: &str = "node.labels.";

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attribute = match &self.attribute {
            Attribute::Id => "node.id",
            Attribute::Hostname => "node.hostname",
            Attribute::Role => "node.role",
            Attribute::Os => "node.platform.os",
            Attribute::Arch => "node.platform.arch",
            Attribute::Label(key) => return write!(f, "{LABEL_PREFIX}{key}{}{}", self.operator, self.value),
        };
        write!(f, "{attribute}{}{}", self.operator, self.value)
    }
}

impl std::fmt::Display for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operator::Eq => "==",
            Operator::Ne => "!=",
        })
    }
}

impl From<Constraint> for String {
    fn from(c: Constraint) -> Self {
        c.to_string()
    }
}

impl TryFrom<String> for Constraint {
    type Error = SpecError;
    fn try_from(text: String) -> Result<Self, SpecError> {
        parse_constraint(&text)
    }
}

/// Swarm's key syntax: a letter or `_`, then letters, digits, `-`, `_` and `.`.
fn valid_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key.len() >= 2
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Swarm's value syntax: letters, digits, blanks and `: - _ . * ( ) ? + [ ] \ ^ $ | /` (nothing
/// that is or may become an operator). Matching is literal: `*` is not a wildcard.
fn valid_value(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
                || br":-_.*()?+[]\^$|/".contains(&b)
        })
}

/// Parses one `--constraint` as Swarm does (`==` is looked for first, blanks around the key and
/// the value are ignored, attribute names ignore case). Unlike Swarm, an attribute Hush cannot
/// test is refused here instead of leaving the service unplaceable without a word.
pub fn parse_constraint(spec: &str) -> Result<Constraint, SpecError> {
    let invalid = |reason: String| SpecError::Constraint { spec: spec.to_string(), reason };
    let (key, operator, value) = if let Some((k, v)) = spec.split_once("==") {
        (k, Operator::Eq, v)
    } else if let Some((k, v)) = spec.split_once("!=") {
        (k, Operator::Ne, v)
    } else {
        return Err(invalid("expected KEY==VALUE or KEY!=VALUE, e.g. node.labels.role==db".into()));
    };
    let (key, value) = (key.trim(), value.trim());
    if !valid_key(key) {
        return Err(invalid(format!("key {key:?} is invalid")));
    }
    if !valid_value(value) {
        return Err(invalid(format!("value {value:?} is invalid")));
    }
    let lower = key.to_ascii_lowercase();
    let attribute = match lower.as_str() {
        "node.id" => Attribute::Id,
        "node.hostname" => Attribute::Hostname,
        "node.role" => Attribute::Role,
        "node.platform.os" => Attribute::Os,
        "node.platform.arch" => Attribute::Arch,
        l if l.starts_with(LABEL_PREFIX) && l.len() > LABEL_PREFIX.len() => {
            Attribute::Label(key[LABEL_PREFIX.len()..].to_string())
        }
        "node.name" => return Err(invalid("Swarm has no node.name: a node's name is node.hostname".into())),
        l if l.starts_with("engine.labels.") => {
            return Err(invalid("Hush nodes have no Docker Engine labels: use node.labels.KEY".into()));
        }
        _ => {
            return Err(invalid(format!(
                "unknown attribute {key}: expected node.id, node.hostname, node.role, node.platform.os, node.platform.arch or node.labels.KEY"
            )));
        }
    };
    Ok(Constraint { attribute, operator, value: value.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_parse_as_swarms() {
        let c = parse_constraint(" node.labels.role == db ").unwrap();
        assert_eq!(
            c,
            Constraint { attribute: Attribute::Label("role".into()), operator: Operator::Eq, value: "db".into() }
        );
        assert_eq!(c.to_string(), "node.labels.role==db");
        let c = parse_constraint("NODE.Hostname!=n2").unwrap();
        assert_eq!((c.attribute.clone(), c.operator), (Attribute::Hostname, Operator::Ne));
        assert_eq!(c.to_string(), "node.hostname!=n2");
        // The label key keeps its case; the prefix does not.
        assert_eq!(parse_constraint("Node.Labels.Zone==a").unwrap().to_string(), "node.labels.Zone==a");
        assert_eq!(parse_constraint("node.platform.arch==x86_64").unwrap().attribute, Attribute::Arch);
        // `==` is found first, as Swarm's parser does: the key `a!` is then invalid.
        assert!(parse_constraint("node.id!=a==b").is_err());
        for bad in [
            "",
            " ",
            "nodeabc",
            "node ~ abc",
            "node.labels.a>=b",
            "1node==a",
            "no de==x",
            "node.labels.role==",
            "node.labels.role== ",
            "node.labels.==x",
            "node.labels.a==b,c",
            "node.labels.a==b=c",
            "node.name==x",
            "engine.labels.os==linux",
            "node.ip==10.0.0.1",
            "color==red",
        ] {
            assert!(matches!(parse_constraint(bad), Err(SpecError::Constraint { .. })), "{bad:?} was accepted");
        }
        let err = parse_constraint("node.name==n2").unwrap_err().to_string();
        assert!(err.contains("node.hostname"), "{err}");
        // Stored as text, read back the same.
        let json = serde_json::to_string(&parse_constraint("node.id==abc").unwrap()).unwrap();
        assert_eq!(json, "\"node.id==abc\"");
        assert!(serde_json::from_str::<Constraint>("\"node.bogus==x\"").is_err());
    }

    #[test]
    fn short_syntax_uses_docker_defaults() {
        let secret = parse_reference(Kind::Secret, "db_password").unwrap();
        assert_eq!(
            secret,
            Reference { source: "db_password".into(), target: "db_password".into(), uid: 0, gid: 0, mode: 0o444 }
        );
        assert_eq!(secret.absolute_target(), "/run/secrets/db_password");
        let config = parse_reference(Kind::Config, "nginx_conf").unwrap();
        assert_eq!(config.absolute_target(), "/nginx_conf");
        // A relative target is relative to / for a config (to /run/secrets for a secret), as Docker's.
        let config = parse_reference(Kind::Config, "source=c,target=rel/c").unwrap();
        assert_eq!(config.absolute_target(), "/rel/c");
        let secret = parse_reference(Kind::Secret, "source=s,target=rel/s").unwrap();
        assert_eq!(secret.absolute_target(), "/run/secrets/rel/s");
    }

    #[test]
    fn long_syntax() {
        let r = parse_reference(Kind::Secret, "source=tls_key,target=server.key,uid=100,gid=101,mode=0400").unwrap();
        assert_eq!(
            (r.source.as_str(), r.target.as_str(), r.uid, r.gid, r.mode),
            ("tls_key", "server.key", 100, 101, 0o400)
        );
        let r = parse_reference(Kind::Config, "source=nginx_conf,target=/etc/nginx/nginx.conf,mode=0o440").unwrap();
        assert_eq!((r.absolute_target().as_str(), r.mode), ("/etc/nginx/nginx.conf", 0o440));
    }

    #[test]
    fn modes_must_be_octal() {
        assert_eq!(parse_mode("0400"), Ok(0o400));
        assert_eq!(parse_mode("0o440"), Ok(0o440));
        assert_eq!(parse_mode("0"), Ok(0));
        assert!(matches!(parse_mode("400"), Err(SpecError::DecimalMode(_))));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("01777").is_err());
        assert!(parse_mode("rw").is_err());
        let err = parse_reference(Kind::Secret, "source=a,mode=400").unwrap_err();
        assert!(err.to_string().contains("leading 0"), "{err}");
    }

    #[test]
    fn bad_references_are_refused() {
        assert!(matches!(parse_reference(Kind::Secret, "source=a,target=../etc/passwd"), Err(SpecError::Escape(_))));
        assert!(matches!(parse_reference(Kind::Secret, "source=a,target=x/../../y"), Err(SpecError::Escape(_))));
        assert!(parse_reference(Kind::Secret, "target=x").is_err());
        assert!(parse_reference(Kind::Secret, "source=a,color=red").is_err());
        assert!(parse_reference(Kind::Secret, "source=a,uid=-1").is_err());
        assert!(parse_reference(Kind::Secret, "source=a,target=a//b").is_err());
        let a = parse_reference(Kind::Secret, "source=a,target=same").unwrap();
        let b = parse_reference(Kind::Secret, "source=b,target=/run/secrets/same").unwrap();
        assert!(matches!(check_unique_targets([&a, &b]), Err(SpecError::DuplicateTarget(_))));
    }
}
