//! `hush secret import` / `hush config import` (Kubernetes manifests, all or nothing) and
//! `hush config export --format k8s`. Parsing lives in [`crate::k8s`]; this speaks to the vault.

use super::call_error;
use crate::k8s::{self, ExportedConfig};
use crate::model::Kind;
use crate::secret::{SecretBytes, open_value_file};
use anyhow::{Context, bail};
use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use std::collections::BTreeMap;
use std::process::ExitCode;
use tonic::transport::Channel;

/// Largest manifest file read (a file of many Secrets; each value keeps its own limit).
const MAX_FILE: u64 = 64 * 1024 * 1024;

/// Reads and parses `file` (or `-`) before anything touches the vault.
pub fn load(kind: Kind, file: &str, name_template: &str) -> anyhow::Result<k8s::Parsed> {
    let text = if file == "-" {
        SecretBytes::read_at_most(std::io::stdin().lock(), MAX_FILE + 1).context("cannot read standard input")?
    } else {
        open_value_file(std::path::Path::new(file))
            .and_then(|f| SecretBytes::read_at_most(f, MAX_FILE + 1))
            .with_context(|| format!("cannot read {file}"))?
    };
    if text.len() as u64 > MAX_FILE {
        bail!("{file}: larger than {} MiB", MAX_FILE / 1024 / 1024);
    }
    let text = std::str::from_utf8(text.expose_secret()).map_err(|_| anyhow::anyhow!("{file}: not UTF-8 text"))?;
    let parsed = k8s::parse(kind, file, text, name_template)?;
    for note in &parsed.notes {
        eprintln!("note: {note}");
    }
    Ok(parsed)
}

fn pb_kind(kind: Kind) -> i32 {
    match kind {
        Kind::Secret => pb::Kind::Secret as i32,
        Kind::Config => pb::Kind::Config as i32,
    }
}

/// Creates what is new and rotates what changed; a failed create removes what this import
/// created. Rotations come last (a live new version is not undone), each only if the value
/// differs (compared in the vault), so re-importing an unchanged file changes nothing.
pub async fn import(client: &mut AdminClient<Channel>, kind: Kind, parsed: k8s::Parsed) -> anyhow::Result<ExitCode> {
    let listed = client.list(pb::ListRequest { kind: pb_kind(kind), filters: vec![] }).await.map_err(call_error)?;
    let existing: BTreeMap<String, String> =
        listed.into_inner().objects.into_iter().map(|o| (o.name.to_lowercase(), o.name)).collect();
    let (mut create, mut rotate) = (Vec::new(), Vec::new());
    for object in parsed.objects {
        match existing.get(&object.name.to_lowercase()) {
            Some(name) if *name == object.name => rotate.push(object),
            Some(name) => bail!(
                "{}: {kind} name {} is taken by {name} (names are unique regardless of case)",
                object.origin,
                object.name
            ),
            None => create.push(object),
        }
    }
    let mut report = Vec::new();
    let mut created = Vec::new();
    for object in &create {
        let request = pb::CreateRequest {
            kind: pb_kind(kind),
            name: object.name.clone(),
            labels: object.labels.clone().into_iter().collect(),
            data: object.value.expose_secret().to_vec(),
        };
        match client.create(request).await {
            Ok(response) => {
                created.push(response.into_inner().id);
                report.push(format!("Creating {kind} {}", object.name));
            }
            Err(status) => {
                let error = format!("{}: {}", object.origin, call_error(status));
                for id in created {
                    if let Err(status) =
                        client.remove(pb::RemoveRequest { kind: pb_kind(kind), reference: id.clone() }).await
                    {
                        bail!(
                            "{error} (and removing {kind} {id}, created by this import, failed: {})",
                            call_error(status)
                        );
                    }
                }
                bail!("{error}: nothing was imported");
            }
        }
    }
    for object in &rotate {
        let request = pb::RotateRequest {
            kind: pb_kind(kind),
            reference: object.name.clone(),
            data: object.value.expose_secret().to_vec(),
            only_if_changed: true,
        };
        let response =
            client.rotate(request).await.map_err(|s| anyhow::anyhow!("{}: {}", object.origin, call_error(s)))?;
        let response = response.into_inner();
        if response.changed {
            report.push(format!("Rotating {kind} {} (version {})", object.name, response.version));
        }
    }
    for line in &report {
        println!("{line}");
    }
    if report.is_empty() {
        println!(
            "Nothing changed: {} {kind}{} up to date",
            rotate.len(),
            if rotate.len() == 1 { " is" } else { "s are" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `hush config export NAME... --format k8s`: ConfigMap manifests on standard output.
pub async fn export(
    client: &mut AdminClient<Channel>,
    kind: Kind,
    references: Vec<String>,
) -> anyhow::Result<ExitCode> {
    debug_assert_eq!(kind, Kind::Config, "secrets are refused before connecting");
    let mut configs = Vec::new();
    for reference in references {
        let response =
            client.inspect(pb::InspectRequest { kind: pb_kind(kind), reference }).await.map_err(call_error)?;
        let response = response.into_inner();
        let meta = response.meta.unwrap_or_default();
        configs.push(ExportedConfig {
            name: meta.name,
            labels: meta.labels.into_iter().collect(),
            data: response.data,
        });
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(k8s::export_configmaps(&configs).as_bytes()).and_then(|()| out.flush()).context("writing output")?;
    Ok(ExitCode::SUCCESS)
}
