//! Kubernetes manifests: `kind: Secret` and `kind: ConfigMap` documents (also inside `kind: List`)
//! read into Hush objects for `hush secret import` / `hush config import`, and configs written
//! back as ConfigMaps for `hush config export --format k8s`. Files only: the CLI talks to the vault.
//!
//! Each key of a Secret or ConfigMap becomes one object, named by `--name-template` (default
//! `{{.Name}}_{{.Key}}`), carrying the manifest's labels plus `hush.k8s.name` and `hush.k8s.key`
//! (and `hush.k8s.namespace`), which let `export` group configs back into their ConfigMaps.

use crate::model::{self, Kind};
use crate::secret::SecretBytes;
use crate::template::Template;
use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use zeroize::Zeroize;

/// Labels an import adds, so an export can rebuild the ConfigMap a config came from.
pub const NAME_LABEL: &str = "hush.k8s.name";
pub const KEY_LABEL: &str = "hush.k8s.key";
pub const NAMESPACE_LABEL: &str = "hush.k8s.namespace";

/// The default `--name-template`: `NAME_KEY`, as compose names objects `PROJECT_KEY`.
pub const DEFAULT_NAME_TEMPLATE: &str = "{{.Name}}_{{.Key}}";

/// Secret types Hush imports (the ones that hold plain key/value data).
const SECRET_TYPES: &[&str] =
    &["Opaque", "kubernetes.io/tls", "kubernetes.io/dockerconfigjson", "kubernetes.io/basic-auth"];

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

/// One object to create or rotate.
#[derive(Debug)]
pub struct Imported {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: SecretBytes,
    /// `document 2 (Secret db), key password`: where it came from, for messages.
    pub origin: String,
}

/// What a file holds for one kind, and notes about documents skipped.
#[derive(Debug, Default)]
pub struct Parsed {
    pub objects: Vec<Imported>,
    pub notes: Vec<String>,
}

/// Parses every document of `text` (the file `file`), keeping the `Secret`s for `Kind::Secret`
/// and the `ConfigMap`s for `Kind::Config`; any problem is an error naming the document and key,
/// and nothing is returned.
pub fn parse(kind: Kind, file: &str, text: &str, name_template: &str) -> Result<Parsed, K8sError> {
    let fail = |message: String| K8sError::Invalid { file: file.to_string(), message };
    let template = Template::parse(name_template).map_err(|e| fail(format!("--name-template: {e}")))?;
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    let documents: Vec<Value> = serde_saphyr::from_str_multiple_with_options(text, options)
        .map_err(|e| fail(e.to_string().lines().next().unwrap_or_default().to_string()))?;
    let mut parsed = Parsed::default();
    let mut names = BTreeMap::new();
    for (index, document) in documents.iter().enumerate() {
        let at = format!("document {}", index + 1);
        let items: Vec<(String, &Value)> = match document.get("kind").and_then(Value::as_str) {
            Some("List") => match document.get("items") {
                Some(Value::Array(items)) => {
                    items.iter().enumerate().map(|(i, item)| (format!("{at}, item {}", i + 1), item)).collect()
                }
                _ => return Err(fail(format!("{at} (List): items: expected a list"))),
            },
            _ if document.is_null() => Vec::new(),
            _ => vec![(at, document)],
        };
        for (at, item) in items {
            let Some(object) = item.as_object() else {
                return Err(fail(format!("{at}: expected a Kubernetes object (a mapping)")));
            };
            let found_kind = object.get("kind").and_then(Value::as_str).unwrap_or("(no kind)");
            let name = object.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
            let wanted = match kind {
                Kind::Secret => "Secret",
                Kind::Config => "ConfigMap",
            };
            if found_kind != wanted {
                let hint = match found_kind {
                    "Secret" => ": use hush secret import",
                    "ConfigMap" => ": use hush config import",
                    _ => "",
                };
                parsed.notes.push(format!("skipping {at} ({found_kind} {name}): not a {wanted}{hint}"));
                continue;
            }
            let at = format!("{at} ({wanted} {name})");
            for imported in read_object(kind, object, &at, &template).map_err(fail)? {
                if let Some(other) = names.insert(imported.name.to_lowercase(), imported.origin.clone()) {
                    return Err(fail(format!(
                        "{}: {kind} name {} is also made by {other}",
                        imported.origin, imported.name
                    )));
                }
                parsed.objects.push(imported);
            }
        }
    }
    Ok(parsed)
}

/// The keys and values of one Secret or ConfigMap, each as an object to import.
fn read_object(
    kind: Kind,
    object: &Map<String, Value>,
    at: &str,
    template: &Template,
) -> Result<Vec<Imported>, String> {
    let metadata = object.get("metadata").and_then(Value::as_object);
    let name = metadata.and_then(|m| m.get("name")).and_then(Value::as_str).filter(|n| !n.is_empty());
    let name = name.ok_or_else(|| format!("{at}: metadata.name is required"))?;
    let namespace = metadata.and_then(|m| m.get("namespace")).and_then(Value::as_str);
    let mut labels = BTreeMap::new();
    if let Some(given) = metadata.and_then(|m| m.get("labels")) {
        let given = given.as_object().ok_or_else(|| format!("{at}: metadata.labels: expected a mapping"))?;
        for (key, value) in given {
            let value = value.as_str().ok_or_else(|| format!("{at}: metadata.labels.{key}: expected a string"))?;
            labels.insert(key.clone(), value.to_string());
        }
    }
    labels.insert(NAME_LABEL.into(), name.to_string());
    if let Some(namespace) = namespace {
        labels.insert(NAMESPACE_LABEL.into(), namespace.to_string());
    }

    // Key → value; base64 fields decoded. `stringData` wins over `data`, as the API server merges.
    let mut values: BTreeMap<String, SecretBytes> = BTreeMap::new();
    let (encoded, plain) = match kind {
        Kind::Secret => ("data", "stringData"),
        Kind::Config => ("binaryData", "data"),
    };
    for field in [encoded, plain] {
        let Some(entries) = object.get(field) else { continue };
        if entries.is_null() {
            continue;
        }
        let entries = entries.as_object().ok_or_else(|| format!("{at}: {field}: expected a mapping"))?;
        for (key, value) in entries {
            let text = value.as_str().ok_or_else(|| format!("{at}: {field}.{key}: expected a string"))?;
            let bytes = if field == encoded {
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| format!("{at}: {field}.{key}: not valid base64"))?
            } else {
                text.as_bytes().to_vec()
            };
            if kind == Kind::Config && values.contains_key(key) {
                return Err(format!("{at}: key {key} is in both binaryData and data"));
            }
            values.insert(key.clone(), SecretBytes::new(bytes));
        }
    }
    if kind == Kind::Secret {
        check_secret_type(object, &values, at)?;
    }
    if values.is_empty() {
        return Err(format!("{at}: no keys: nothing to import"));
    }

    let mut imported = Vec::with_capacity(values.len());
    for (key, value) in values {
        let origin = format!("{at}, key {key}");
        let data = crate::template::from_json(&json!({"Name": name, "Key": key, "Namespace": namespace.unwrap_or("")}));
        let object_name = template.render(&data).map_err(|e| format!("{origin}: --name-template: {e}"))?;
        model::validate_name(&object_name).map_err(|e| format!("{origin}: {e} (choose another --name-template)"))?;
        model::validate_size(kind, value.len()).map_err(|e| format!("{origin}: {e}"))?;
        let mut labels = labels.clone();
        labels.insert(KEY_LABEL.into(), key);
        imported.push(Imported { name: object_name, labels, value, origin });
    }
    Ok(imported)
}

/// The Secret types Hush takes, with the keys Kubernetes requires of each.
fn check_secret_type(
    object: &Map<String, Value>,
    values: &BTreeMap<String, SecretBytes>,
    at: &str,
) -> Result<(), String> {
    let kind = object.get("type").and_then(Value::as_str).unwrap_or("Opaque");
    if !SECRET_TYPES.contains(&kind) {
        return Err(format!("{at}: type {kind} is not supported (supported: {})", SECRET_TYPES.join(", ")));
    }
    let require = |key: &str| {
        if values.contains_key(key) { Ok(()) } else { Err(format!("{at}: type {kind} needs the key {key}")) }
    };
    match kind {
        "kubernetes.io/tls" => require("tls.crt").and_then(|()| require("tls.key")),
        "kubernetes.io/dockerconfigjson" => {
            require(".dockerconfigjson")?;
            let config = values[".dockerconfigjson"].expose_secret();
            match serde_json::from_slice::<Value>(config) {
                Ok(mut parsed) if parsed.is_object() => {
                    zeroize_json(&mut parsed);
                    Ok(())
                }
                _ => Err(format!("{at}: key .dockerconfigjson: not a JSON object")),
            }
        }
        "kubernetes.io/basic-auth" if !values.contains_key("username") && !values.contains_key("password") => {
            Err(format!("{at}: type {kind} needs the key username or password"))
        }
        _ => Ok(()),
    }
}

/// Wipes the strings of a parsed JSON value that held secret material.
fn zeroize_json(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(zeroize_json),
        Value::Object(map) => map.values_mut().for_each(zeroize_json),
        _ => {}
    }
}

/// One config to export: its name, labels and data.
#[derive(Debug)]
pub struct ExportedConfig {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub data: Vec<u8>,
}

/// One ConfigMap being rebuilt: its labels, `data` and `binaryData`.
type ConfigMapParts = (BTreeMap<String, String>, Map<String, Value>, Map<String, Value>);

/// ConfigMap manifests for `configs`: configs an import made go back to their ConfigMap and key
/// (the `hush.k8s.*` labels); any other config becomes a ConfigMap of its own, named after it in
/// Kubernetes' spelling (lowercase, `_` as `-`), with one key: its name. Text goes to `data`,
/// anything else to `binaryData`.
pub fn export_configmaps(configs: &[ExportedConfig]) -> String {
    let mut maps: BTreeMap<(String, String), ConfigMapParts> = BTreeMap::new();
    for config in configs {
        let map_name =
            config.labels.get(NAME_LABEL).cloned().unwrap_or_else(|| config.name.to_lowercase().replace('_', "-"));
        let namespace = config.labels.get(NAMESPACE_LABEL).cloned().unwrap_or_default();
        let key = config.labels.get(KEY_LABEL).cloned().unwrap_or_else(|| config.name.clone());
        let entry = maps.entry((namespace, map_name)).or_default();
        entry.0.extend(
            config.labels.iter().filter(|(k, _)| !k.starts_with("hush.k8s.")).map(|(k, v)| (k.clone(), v.clone())),
        );
        match std::str::from_utf8(&config.data) {
            Ok(text) => entry.1.insert(key, json!(text)),
            Err(_) => entry.2.insert(key, json!(base64::engine::general_purpose::STANDARD.encode(&config.data))),
        };
    }
    let documents: Vec<String> = maps
        .into_iter()
        .map(|((namespace, name), (labels, data, binary))| {
            let mut metadata = json!({ "name": name });
            if !namespace.is_empty() {
                metadata["namespace"] = json!(namespace);
            }
            if !labels.is_empty() {
                metadata["labels"] = json!(labels);
            }
            let mut document = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata });
            if !data.is_empty() {
                document["data"] = Value::Object(data);
            }
            if !binary.is_empty() {
                document["binaryData"] = Value::Object(binary);
            }
            serde_saphyr::to_string(&document).expect("JSON values serialise as YAML")
        })
        .collect();
    documents.join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(parsed: &Parsed) -> Vec<&str> {
        parsed.objects.iter().map(|o| o.name.as_str()).collect()
    }

    fn value<'a>(parsed: &'a Parsed, name: &str) -> &'a [u8] {
        parsed.objects.iter().find(|o| o.name == name).unwrap().value.expose_secret()
    }

    const FILE: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: shop
  labels: {app: shop}
type: Opaque
data:
  password: czNjcjN0
  user: YWRtaW4=
stringData:
  user: root
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web}
data:
  nginx.conf: "listen 80;\n"
binaryData:
  logo.png: iVBORw==
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Secret
    metadata: {name: tls}
    type: kubernetes.io/tls
    stringData: {tls.crt: CERT, tls.key: KEY}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
"#;

    #[test]
    fn secrets_and_configmaps_become_one_object_per_key() {
        let secrets = parse(Kind::Secret, "f.yaml", FILE, DEFAULT_NAME_TEMPLATE).unwrap();
        assert_eq!(names(&secrets), ["db_password", "db_user", "tls_tls.crt", "tls_tls.key"]);
        assert_eq!(value(&secrets, "db_password"), b"s3cr3t");
        assert_eq!(value(&secrets, "db_user"), b"root", "stringData wins over data");
        let db = &secrets.objects[0];
        assert_eq!(db.labels["app"], "shop");
        assert_eq!((db.labels[NAME_LABEL].as_str(), db.labels[KEY_LABEL].as_str()), ("db", "password"));
        assert_eq!(db.labels[NAMESPACE_LABEL], "shop");
        assert_eq!(
            secrets.notes,
            [
                "skipping document 2 (ConfigMap web): not a Secret: use hush config import",
                "skipping document 3, item 2 (Deployment web): not a Secret"
            ]
        );

        let configs = parse(Kind::Config, "f.yaml", FILE, "{{.Namespace}}{{.Name}}-{{.Key}}").unwrap();
        assert_eq!(names(&configs), ["web-logo.png", "web-nginx.conf"]);
        assert_eq!(value(&configs, "web-nginx.conf"), b"listen 80;\n");
        assert_eq!(value(&configs, "web-logo.png"), [0x89, b'P', b'N', b'G']);
        assert_eq!(configs.notes.len(), 3);
    }

    #[test]
    fn errors_name_the_document_and_key() {
        let err = |kind: Kind, text: &str| parse(kind, "s.yaml", text, DEFAULT_NAME_TEMPLATE).unwrap_err().to_string();
        let secret = |body: &str| format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\n{body}");
        assert_eq!(
            err(Kind::Secret, &secret("data: {pw: '%%%'}")),
            "s.yaml: document 1 (Secret db): data.pw: not valid base64"
        );
        assert_eq!(
            err(Kind::Secret, &secret("data: {pw: 3}")),
            "s.yaml: document 1 (Secret db): data.pw: expected a string"
        );
        assert_eq!(
            err(Kind::Secret, &secret("type: kubernetes.io/tls\nstringData: {tls.crt: c}")),
            "s.yaml: document 1 (Secret db): type kubernetes.io/tls needs the key tls.key"
        );
        assert!(
            err(Kind::Secret, &secret("type: kubernetes.io/service-account-token\nstringData: {a: b}"))
                .contains("is not supported")
        );
        assert!(
            err(Kind::Secret, &secret("type: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: nope}"))
                .contains("not a JSON object")
        );
        assert!(
            err(Kind::Secret, &secret("type: kubernetes.io/basic-auth\nstringData: {x: y}"))
                .contains("username or password")
        );
        assert_eq!(
            err(Kind::Secret, &secret("stringData: {a_: b}")).split(": ").nth(2).unwrap(),
            r#"invalid name "db_a_""#
        );
        assert_eq!(
            err(Kind::Secret, &secret("stringData: {e: ''}")),
            "s.yaml: document 1 (Secret db), key e: secret data is empty: a secret needs 1 to 511999 bytes"
        );
        assert_eq!(
            err(Kind::Secret, &secret("stringData: {}")),
            "s.yaml: document 1 (Secret db): no keys: nothing to import"
        );
        assert!(err(Kind::Secret, "kind: Secret\nstringData: {a: b}").contains("metadata.name is required"));
        let two = format!("{}\n---\n{}", secret("stringData: {a: b}"), secret("stringData: {A: c}"));
        assert!(
            err(Kind::Secret, &two.replace("name: db}\nstringData: {A", "name: DB}\nstringData: {a"))
                .contains("is also made by document 1")
        );
        assert!(err(Kind::Secret, "a: [").starts_with("s.yaml: "));
        let map = "kind: ConfigMap\nmetadata: {name: m}\ndata: {k: v}\nbinaryData: {k: dg==}";
        assert_eq!(err(Kind::Config, map), "s.yaml: document 1 (ConfigMap m): key k is in both binaryData and data");
    }

    #[test]
    fn configmaps_export_back_to_what_was_imported() {
        let configs = parse(Kind::Config, "f.yaml", FILE, DEFAULT_NAME_TEMPLATE).unwrap();
        let mut exported: Vec<ExportedConfig> = configs
            .objects
            .iter()
            .map(|o| ExportedConfig {
                name: o.name.clone(),
                labels: o.labels.clone(),
                data: o.value.expose_secret().to_vec(),
            })
            .collect();
        exported.push(ExportedConfig { name: "Other_conf".into(), labels: BTreeMap::new(), data: b"x".to_vec() });
        let yaml = export_configmaps(&exported);
        let again = parse(Kind::Config, "export.yaml", &yaml, DEFAULT_NAME_TEMPLATE).unwrap();
        assert_eq!(names(&again), ["other-conf_Other_conf", "web_logo.png", "web_nginx.conf"]);
        assert_eq!(value(&again, "web_nginx.conf"), b"listen 80;\n");
        assert_eq!(value(&again, "web_logo.png"), [0x89, b'P', b'N', b'G']);
        assert!(yaml.contains("kind: ConfigMap") && yaml.contains("binaryData:"), "{yaml}");
    }
}
