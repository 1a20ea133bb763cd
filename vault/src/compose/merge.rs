//! Several `-f` files merged as the compose specification says: mappings merge key by key (a
//! later file's value wins), and a service's `secrets`/`configs` lists merge by target (the spec's
//! unique key): an entry whose target is already present is merged into it field by field, any
//! other entry is appended. A top-level definition set in several files is merged field by field
//! (labels key by key), so an override can change only `name:` or `file:`.

use super::model::{FileModel, ObjectDef, ReferenceDef};
use crate::model::Kind;
use crate::spec::SECRETS_DIR;
use std::collections::BTreeMap;

/// The path a reference lands on in a task, before validation: its merge key.
pub fn effective_target(kind: Kind, reference: &ReferenceDef) -> String {
    match (&reference.target, kind) {
        (Some(t), _) if t.starts_with('/') => t.clone(),
        (Some(t), Kind::Secret) => format!("{SECRETS_DIR}/{t}"),
        (Some(t), Kind::Config) => format!("/{t}"),
        (None, Kind::Secret) => format!("{SECRETS_DIR}/{}", reference.source),
        (None, Kind::Config) => format!("/{}", reference.source),
    }
}

/// Merges `files` in order; the first is the base.
pub fn merge(files: Vec<FileModel>) -> FileModel {
    let mut files = files.into_iter();
    let mut merged = files.next().unwrap_or_default();
    for file in files {
        if file.name.is_some() {
            merged.name = file.name;
        }
        merge_defs(&mut merged.secrets, file.secrets);
        merge_defs(&mut merged.configs, file.configs);
        for (name, service) in file.services {
            let base = merged.services.entry(name).or_default();
            for (kind, base_list, list) in
                [(Kind::Secret, &mut base.secrets, service.secrets), (Kind::Config, &mut base.configs, service.configs)]
            {
                if let Some(list) = list {
                    merge_references(kind, base_list.get_or_insert_with(Vec::new), list);
                }
            }
            // A sequence: appended (a repeated constraint is the same constraint).
            if let Some(constraints) = service.constraints {
                let base = base.constraints.get_or_insert_with(Vec::new);
                for constraint in constraints {
                    if !base.contains(&constraint) {
                        base.push(constraint);
                    }
                }
            }
        }
    }
    merged
}

fn merge_defs(base: &mut BTreeMap<String, ObjectDef>, overrides: BTreeMap<String, ObjectDef>) {
    for (key, def) in overrides {
        match base.get_mut(&key) {
            None => {
                base.insert(key, def);
            }
            Some(existing) => {
                existing.file = def.file.or(existing.file.take());
                existing.environment = def.environment.or(existing.environment.take());
                existing.content = def.content.or(existing.content.take());
                existing.external = def.external.or(existing.external);
                existing.name = def.name.or(existing.name.take());
                existing.labels.extend(def.labels);
                existing.origin = def.origin;
            }
        }
    }
}

fn merge_references(kind: Kind, base: &mut Vec<ReferenceDef>, overrides: Vec<ReferenceDef>) {
    for reference in overrides {
        let target = effective_target(kind, &reference);
        match base.iter_mut().find(|b| effective_target(kind, b) == target) {
            Some(existing) => {
                existing.source = reference.source;
                existing.target = reference.target.or(existing.target.take());
                existing.uid = reference.uid.or(existing.uid);
                existing.gid = reference.gid.or(existing.gid);
                existing.mode = reference.mode.or(existing.mode);
                existing.origin = reference.origin;
            }
            None => base.push(reference),
        }
    }
}
