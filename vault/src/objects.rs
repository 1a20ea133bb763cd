//! Secrets and configs as the vault manages them: validation, lookup by name or ID, sealed
//! versions, and their layout in the store. Knows nothing of gRPC.
//!
//! Store layout per kind (`secret` or `config`):
//! `KIND/obj/ID` → [`ObjectRecord`] (JSON), `KIND/name/LOWERCASE_NAME` → ID (names are unique
//! regardless of case, as Docker's),
//! `KIND/data/ID/VERSION` → sealed value (version zero-padded so keys sort by version).

use crate::crypto::{self, Key};
use crate::model::{self, Kind, ObjectRecord, ValidationError, VersionRecord};
use crate::secret::SecretBytes;
use crate::store::{Entry, Expect, Store, StoreError, Txn};
use chrono::Utc;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{kind} {name} already exists")]
    NameTaken { kind: Kind, name: String },
    #[error("{kind} {reference} not found")]
    NotFound { kind: Kind, reference: String },
    #[error("{kind} {reference} not found: a service references a {kind} by its exact name ({hint})")]
    NotAName { kind: Kind, reference: String, hint: String },
    #[error("{kind} {reference} is ambiguous ({count} matches found)")]
    Ambiguous { kind: Kind, reference: String, count: usize },
    #[error("{kind} {name} version {version} failed its integrity check: the sealed record was altered or moved")]
    Tampered { kind: Kind, name: String, version: u64 },
    #[error("invalid filter {0:?}: expected name=PREFIX, names=NAME, id=PREFIX or label=KEY[=VALUE]")]
    Filter(String),
    #[error("record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{kind} '{name}' is in use by the following service{}: {}", if services.len() == 1 { "" } else { "s" }, services.join(", "))]
    InUse { kind: Kind, name: String, services: Vec<String> },
    #[error("the object changed concurrently too many times; try again")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `--filter` terms: same keys ORed, different keys ANDed, as Docker.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// `name=`: name prefixes, any case.
    names: Vec<String>,
    /// `names=`: exact names, any case.
    exact_names: Vec<String>,
    ids: Vec<String>,
    /// `label=KEY` and `label=KEY=` (any value), `label=KEY=VALUE`.
    labels: Vec<(String, Option<String>)>,
}

impl Filters {
    pub fn parse<'a>(terms: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, VaultError> {
        let mut filters = Self::default();
        for (key, value) in terms {
            match key {
                "name" => filters.names.push(value.to_lowercase()),
                "names" => filters.exact_names.push(value.to_lowercase()),
                "id" => filters.ids.push(value.to_string()),
                "label" => filters.labels.push(match value.split_once('=') {
                    Some((k, "")) => (k.to_string(), None),
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (value.to_string(), None),
                }),
                _ => return Err(VaultError::Filter(format!("{key}={value}"))),
            }
        }
        Ok(filters)
    }

    /// `name` and `id` terms match a prefix, `names` a whole name, names in any case (as
    /// Docker's); each label term must hold.
    fn matches(&self, record: &ObjectRecord) -> bool {
        let any_prefix =
            |terms: &[String], s: &str| terms.is_empty() || terms.iter().any(|t| s.starts_with(t.as_str()));
        let name = record.name.to_lowercase();
        any_prefix(&self.names, &name)
            && (self.exact_names.is_empty() || self.exact_names.contains(&name))
            && any_prefix(&self.ids, &record.id)
            && self.labels.iter().all(|(k, v)| match (record.labels.get(k), v) {
                (Some(_), None) => true,
                (Some(actual), Some(wanted)) => actual == wanted,
                (None, _) => false,
            })
    }
}

/// An object's metadata and the store revision it was read at (for compare-and-swap).
#[derive(Debug, Clone)]
pub struct Found {
    pub record: ObjectRecord,
    revision: u64,
}

/// Attempts of a read-modify-write before giving up with `Contended`.
const CAS_ATTEMPTS: usize = 16;

/// The secrets and configs of one vault, sealed under its data key.
pub struct Objects {
    store: Arc<dyn Store>,
    data_key: Key,
}

pub(crate) fn obj_key(kind: Kind, id: &str) -> String {
    format!("{kind}/obj/{id}")
}
/// The name index is case-insensitive: `DB` is refused while `db` exists, and finds it.
fn name_key(kind: Kind, name: &str) -> String {
    format!("{kind}/name/{}", name.to_lowercase())
}
/// Where stores written before names were case-insensitive keep a mixed-case name.
fn legacy_name_key(kind: Kind, name: &str) -> String {
    format!("{kind}/name/{name}")
}
fn data_prefix(kind: Kind, id: &str) -> String {
    format!("{kind}/data/{id}/")
}
fn data_key(kind: Kind, id: &str, version: u64) -> String {
    format!("{kind}/data/{id}/{version:020}")
}
/// Binds a sealed value to its kind, ID and version: a blob moved to another record fails to open.
fn aad(kind: Kind, id: &str, version: u64) -> Vec<u8> {
    format!("hush/v1/{kind}/{id}/{version}").into_bytes()
}

fn decode(entry: &Entry) -> Result<ObjectRecord, VaultError> {
    serde_json::from_slice(&entry.value)
        .map_err(|e| VaultError::Corrupt { key: entry.key.clone(), reason: e.to_string() })
}

impl Objects {
    pub fn new(store: Arc<dyn Store>, data_key: Key) -> Self {
        Self { store, data_key }
    }

    pub async fn create(
        &self,
        kind: Kind,
        name: &str,
        labels: BTreeMap<String, String>,
        data: SecretBytes,
    ) -> Result<ObjectRecord, VaultError> {
        model::validate_name(name)?;
        model::validate_labels(&labels)?;
        model::validate_size(kind, data.len())?;
        let id = model::new_id();
        let now = Utc::now();
        let record = ObjectRecord {
            id: id.clone(),
            name: name.to_string(),
            labels,
            created_at: now,
            updated_at: now,
            versions: vec![VersionRecord { version: 1, created_at: now, size: data.len() as u64 }],
        };
        let sealed = crypto::seal(&self.data_key, &aad(kind, &id, 1), data.expose_secret());
        let txn = Txn::new()
            .check(name_key(kind, name), Expect::Absent)
            .check(legacy_name_key(kind, name), Expect::Absent)
            .check(obj_key(kind, &id), Expect::Absent)
            .put(name_key(kind, name), id.clone().into_bytes())
            .put(obj_key(kind, &id), serde_json::to_vec(&record).expect("record serialises"))
            .put(data_key(kind, &id, 1), sealed);
        match self.store.commit(txn).await {
            Ok(_) => Ok(record),
            Err(StoreError::Conflict { .. }) => Err(VaultError::NameTaken { kind, name: name.to_string() }),
            Err(e) => Err(e.into()),
        }
    }

    /// Objects matching `filters`, sorted by name as Docker sorts them (naturally: `item2`
    /// before `item10`).
    pub async fn list(&self, kind: Kind, filters: &Filters) -> Result<Vec<ObjectRecord>, VaultError> {
        let snapshot = self.store.range(&format!("{kind}/obj/")).await?;
        let mut records = Vec::with_capacity(snapshot.entries.len());
        for entry in &snapshot.entries {
            let record = decode(entry)?;
            if filters.matches(&record) {
                records.push(record);
            }
        }
        records.sort_by(|a, b| model::natural_cmp(&a.name, &b.name).then_with(|| a.id.cmp(&b.id)));
        Ok(records)
    }

    /// Docker's lookup order: full ID, then name (in any case), then unique ID prefix.
    pub async fn find(&self, kind: Kind, reference: &str) -> Result<Found, VaultError> {
        let not_found = || VaultError::NotFound { kind, reference: reference.to_string() };
        if reference.len() == model::ID_LEN
            && let Some(found) = self.get_by_id(kind, reference).await?
        {
            return Ok(found);
        }
        if let Some(found) = self.find_name(kind, reference).await? {
            return Ok(found);
        }
        if !model::is_id_prefix(reference) {
            return Err(not_found());
        }
        let snapshot = self.store.range(&obj_key(kind, reference)).await?;
        match snapshot.entries.as_slice() {
            [] => Err(not_found()),
            [entry] => Ok(Found { record: decode(entry)?, revision: entry.mod_revision }),
            many => Err(VaultError::Ambiguous { kind, reference: reference.to_string(), count: many.len() }),
        }
    }

    /// The object named `name`, in any case.
    async fn find_name(&self, kind: Kind, name: &str) -> Result<Option<Found>, VaultError> {
        if model::validate_name(name).is_err() {
            return Ok(None);
        }
        let mut entry = self.store.get(&name_key(kind, name)).await?;
        if entry.is_none() && name_key(kind, name) != legacy_name_key(kind, name) {
            entry = self.store.get(&legacy_name_key(kind, name)).await?;
        }
        match entry {
            Some(entry) => self.get_by_id(kind, &String::from_utf8_lossy(&entry.value)).await,
            None => Ok(None),
        }
    }

    /// The object a service reference's `source` names: its exact name only, as Docker's CLI
    /// resolves `--secret source=...` (an ID, ID prefix or a name in another case is refused,
    /// with a hint, rather than stored as the reference's name).
    pub async fn find_by_name(&self, kind: Kind, name: &str) -> Result<Found, VaultError> {
        if let Some(found) = self.find_name(kind, name).await?
            && found.record.name == name
        {
            return Ok(found);
        }
        let hint = match self.find(kind, name).await {
            Ok(found) if found.record.id.starts_with(name) => format!("{name} is the ID of {}", found.record.name),
            Ok(found) => format!("did you mean {}?", found.record.name),
            Err(_) => return Err(VaultError::NotFound { kind, reference: name.to_string() }),
        };
        Err(VaultError::NotAName { kind, reference: name.to_string(), hint })
    }

    pub async fn get_by_id(&self, kind: Kind, id: &str) -> Result<Option<Found>, VaultError> {
        match self.store.get(&obj_key(kind, id)).await? {
            Some(entry) => Ok(Some(Found { record: decode(&entry)?, revision: entry.mod_revision })),
            None => Ok(None),
        }
    }

    /// The plaintext of one version, checked against tampering.
    pub async fn open_version(
        &self,
        kind: Kind,
        record: &ObjectRecord,
        version: u64,
    ) -> Result<SecretBytes, VaultError> {
        let key = data_key(kind, &record.id, version);
        let tampered = || VaultError::Tampered { kind, name: record.name.clone(), version };
        let entry = self.store.get(&key).await?.ok_or_else(tampered)?;
        crypto::open(&self.data_key, &aad(kind, &record.id, version), &entry.value).map_err(|_| tampered())
    }

    /// Adds a version; the new one becomes current.
    pub async fn rotate(&self, kind: Kind, reference: &str, data: SecretBytes) -> Result<ObjectRecord, VaultError> {
        model::validate_size(kind, data.len())?;
        for _ in 0..CAS_ATTEMPTS {
            let Found { mut record, revision } = self.find(kind, reference).await?;
            let version = record.current_version() + 1;
            let now = Utc::now();
            record.versions.push(VersionRecord { version, created_at: now, size: data.len() as u64 });
            record.updated_at = now;
            let sealed = crypto::seal(&self.data_key, &aad(kind, &record.id, version), data.expose_secret());
            let txn = Txn::new()
                .check(obj_key(kind, &record.id), Expect::At(revision))
                .put(obj_key(kind, &record.id), serde_json::to_vec(&record).expect("record serialises"))
                .put(data_key(kind, &record.id, version), sealed);
            match self.store.commit(txn).await {
                Ok(_) => return Ok(record),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(VaultError::Contended)
    }

    /// [`Objects::rotate`], or with `only_if_changed` nothing when the current version already
    /// holds `data` (how a compose re-deploy leaves an unchanged secret alone). Returns whether a
    /// version was added.
    ///
    /// # Security
    /// The comparison happens here, in memory; the caller learns only "changed or not", which an
    /// admin can learn anyway by mounting the secret into a task of a service of theirs.
    pub async fn rotate_checked(
        &self,
        kind: Kind,
        reference: &str,
        data: SecretBytes,
        only_if_changed: bool,
    ) -> Result<(ObjectRecord, bool), VaultError> {
        if only_if_changed {
            model::validate_size(kind, data.len())?;
            let record = self.find(kind, reference).await?.record;
            let current = self.open_version(kind, &record, record.current_version()).await?;
            if current.expose_secret() == data.expose_secret() {
                return Ok((record, false));
            }
        }
        Ok((self.rotate(kind, reference, data).await?, true))
    }

    /// Seals vault-internal values (the join token) under the data key, bound to `label`.
    pub fn seal_internal(&self, label: &str, plaintext: &[u8]) -> Vec<u8> {
        crypto::seal(&self.data_key, format!("hush/v1/internal/{label}").as_bytes(), plaintext)
    }

    pub fn open_internal(&self, label: &str, sealed: &[u8]) -> Result<SecretBytes, VaultError> {
        crypto::open(&self.data_key, format!("hush/v1/internal/{label}").as_bytes(), sealed)
            .map_err(|_| VaultError::Corrupt { key: label.to_string(), reason: "failed its integrity check".into() })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every object of `kind` with the revision it was read at (for [`Objects::drop_versions`]).
    pub async fn list_found(&self, kind: Kind) -> Result<Vec<Found>, VaultError> {
        let snapshot = self.store.range(&format!("{kind}/obj/")).await?;
        snapshot.entries.iter().map(|e| Ok(Found { record: decode(e)?, revision: e.mod_revision })).collect()
    }

    /// Drops `versions` of the object (never its current one): their sealed values and their
    /// entries in its record, in one transaction that `wrap` may add checks to (the leader's
    /// fence). A change to the object since `found` was read makes it fail with a conflict.
    pub async fn drop_versions(
        &self,
        kind: Kind,
        found: &Found,
        versions: &[u64],
        wrap: impl FnOnce(Txn) -> Txn,
    ) -> Result<ObjectRecord, StoreError> {
        let mut record = found.record.clone();
        let current = record.current_version();
        record.versions.retain(|v| v.version == current || !versions.contains(&v.version));
        let mut txn = Txn::new()
            .check(obj_key(kind, &record.id), Expect::At(found.revision))
            .put(obj_key(kind, &record.id), serde_json::to_vec(&record).expect("record serialises"));
        for version in versions.iter().filter(|v| **v != current) {
            txn = txn.delete(data_key(kind, &record.id, *version));
        }
        self.store.commit(wrap(txn)).await?;
        Ok(record)
    }

    /// Removes the object with all its versions, unless `in_use` names a user of it. `in_use`
    /// also returns a store check that holds while its answer does (so a service created
    /// between the check and the removal makes the removal retry).
    pub async fn remove<F, Fut>(&self, kind: Kind, reference: &str, in_use: F) -> Result<ObjectRecord, VaultError>
    where
        F: Fn(ObjectRecord) -> Fut,
        Fut: std::future::Future<Output = Result<(Vec<String>, (String, Expect)), VaultError>>,
    {
        for _ in 0..CAS_ATTEMPTS {
            let Found { record, revision } = self.find(kind, reference).await?;
            let (users, (guard_key, guard)) = in_use(record.clone()).await?;
            if !users.is_empty() {
                return Err(VaultError::InUse { kind, name: record.name, services: users });
            }
            let mut txn = Txn::new()
                .check(guard_key, guard)
                .check(obj_key(kind, &record.id), Expect::At(revision))
                .delete(obj_key(kind, &record.id))
                .delete(name_key(kind, &record.name));
            if legacy_name_key(kind, &record.name) != name_key(kind, &record.name) {
                txn = txn.delete(legacy_name_key(kind, &record.name));
            }
            // Every version in one operation, however many there are: the removal stays one
            // transaction (etcd allows at most 128 operations in one).
            txn = txn.delete_prefix(data_prefix(kind, &record.id));
            match self.store.commit(txn).await {
                Ok(_) => return Ok(record),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(VaultError::Contended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;

    async fn objects() -> (tempfile::TempDir, Arc<RedbStore>, Objects) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let objects = Objects::new(store.clone(), Key::random());
        (dir, store, objects)
    }

    fn data(s: &str) -> SecretBytes {
        SecretBytes::new(s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn create_find_rotate_remove() {
        let (_d, _s, objects) = objects().await;
        let created = objects.create(Kind::Secret, "db", BTreeMap::new(), data("v1")).await.unwrap();
        let by_name = objects.find(Kind::Secret, "db").await.unwrap().record;
        let by_prefix = objects.find(Kind::Secret, &created.id[..5]).await.unwrap().record;
        assert_eq!(by_name, created);
        assert_eq!(by_prefix, created);
        let rotated = objects.rotate(Kind::Secret, "db", data("v2")).await.unwrap();
        assert_eq!(rotated.current_version(), 2);
        assert_eq!(objects.open_version(Kind::Secret, &rotated, 1).await.unwrap().expose_secret(), b"v1");
        assert_eq!(objects.open_version(Kind::Secret, &rotated, 2).await.unwrap().expose_secret(), b"v2");
        objects
            .remove(Kind::Secret, &created.id, |_| async { Ok((vec![], ("unused".to_string(), Expect::Absent))) })
            .await
            .unwrap();
        assert!(matches!(objects.find(Kind::Secret, "db").await, Err(VaultError::NotFound { .. })));
        // The name is free again.
        objects.create(Kind::Secret, "db", BTreeMap::new(), data("v1")).await.unwrap();
    }

    #[tokio::test]
    async fn duplicate_names_are_refused_per_kind() {
        let (_d, _s, objects) = objects().await;
        objects.create(Kind::Secret, "x", BTreeMap::new(), data("a")).await.unwrap();
        let err = objects.create(Kind::Secret, "x", BTreeMap::new(), data("b")).await.unwrap_err();
        assert_eq!(err.to_string(), "secret x already exists");
        objects.create(Kind::Config, "x", BTreeMap::new(), data("b")).await.unwrap();
    }

    #[tokio::test]
    async fn names_are_unique_and_found_in_any_case() {
        let (_d, _s, objects) = objects().await;
        let created = objects.create(Kind::Secret, "ddx", BTreeMap::new(), data("a")).await.unwrap();
        let err = objects.create(Kind::Secret, "DDX", BTreeMap::new(), data("b")).await.unwrap_err();
        assert_eq!(err.to_string(), "secret DDX already exists");
        assert_eq!(objects.find(Kind::Secret, "DDX").await.unwrap().record.id, created.id);
        assert_eq!(objects.find(Kind::Secret, "dDx").await.unwrap().record.name, "ddx");
        // Service references take the exact name only.
        assert_eq!(objects.find_by_name(Kind::Secret, "ddx").await.unwrap().record.id, created.id);
        let err = objects.find_by_name(Kind::Secret, "DDX").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret DDX not found: a service references a secret by its exact name (did you mean ddx?)"
        );
        let prefix = &created.id[..6];
        let err = objects.find_by_name(Kind::Secret, prefix).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "secret {prefix} not found: a service references a secret by its exact name ({prefix} is the ID of ddx)"
            )
        );
        let err = objects.find_by_name(Kind::Secret, &created.id).await.unwrap_err();
        assert!(err.to_string().contains("is the ID of ddx"), "{err}");
        assert!(matches!(objects.find_by_name(Kind::Secret, "nope").await, Err(VaultError::NotFound { .. })));
        // Removal frees the name in every case.
        objects
            .remove(Kind::Secret, "DDX", |_| async { Ok((vec![], ("unused".to_string(), Expect::Absent))) })
            .await
            .unwrap();
        objects.create(Kind::Secret, "DDX", BTreeMap::new(), data("a")).await.unwrap();
    }

    #[tokio::test]
    async fn stores_with_mixed_case_name_keys_still_work() {
        let (_d, store, objects) = objects().await;
        let created = objects.create(Kind::Secret, "Old", BTreeMap::new(), data("a")).await.unwrap();
        // As an older vault wrote it: the name key in its own case.
        store
            .commit(
                Txn::new()
                    .delete(name_key(Kind::Secret, "Old"))
                    .put(legacy_name_key(Kind::Secret, "Old"), created.id.clone().into_bytes()),
            )
            .await
            .unwrap();
        assert_eq!(objects.find(Kind::Secret, "Old").await.unwrap().record.id, created.id);
        assert!(objects.create(Kind::Secret, "Old", BTreeMap::new(), data("b")).await.is_err());
        objects
            .remove(Kind::Secret, "Old", |_| async { Ok((vec![], ("unused".to_string(), Expect::Absent))) })
            .await
            .unwrap();
        assert!(store.range("secret/name/").await.unwrap().entries.is_empty());
    }

    #[tokio::test]
    async fn name_wins_over_id_prefix_and_ambiguity_is_reported() {
        let (_d, _s, objects) = objects().await;
        let mut ids = Vec::new();
        for i in 0..40 {
            ids.push(objects.create(Kind::Secret, &format!("s{i}"), BTreeMap::new(), data("a")).await.unwrap().id);
        }
        // 40 IDs over 36 first characters: some first character is shared.
        let shared = (0..ids.len())
            .find_map(|i| ids[i + 1..].iter().find(|other| other[..1] == ids[i][..1]).map(|_| ids[i][..1].to_string()))
            .unwrap();
        let count = ids.iter().filter(|id| id.starts_with(&shared)).count();
        let err = objects.find(Kind::Secret, &shared).await.unwrap_err();
        assert_eq!(err.to_string(), format!("secret {shared} is ambiguous ({count} matches found)"));
        // A secret named like that prefix is found by name first.
        let named = objects.create(Kind::Secret, &shared, BTreeMap::new(), data("a")).await.unwrap();
        assert_eq!(objects.find(Kind::Secret, &shared).await.unwrap().record.id, named.id);
    }

    #[tokio::test]
    async fn sealed_value_moved_to_another_record_fails() {
        let (_d, store, objects) = objects().await;
        let a = objects.create(Kind::Config, "a", BTreeMap::new(), data("aaa")).await.unwrap();
        let b = objects.create(Kind::Config, "b", BTreeMap::new(), data("bbb")).await.unwrap();
        let blob_a = store.get(&data_key(Kind::Config, &a.id, 1)).await.unwrap().unwrap().value;
        store.commit(Txn::new().put(data_key(Kind::Config, &b.id, 1), blob_a)).await.unwrap();
        let err = objects.open_version(Kind::Config, &b, 1).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "config b version 1 failed its integrity check: the sealed record was altered or moved"
        );
    }

    #[tokio::test]
    async fn invalid_input_stores_nothing() {
        let (_d, store, objects) = objects().await;
        assert!(objects.create(Kind::Secret, "bad name", BTreeMap::new(), data("a")).await.is_err());
        assert!(objects.create(Kind::Secret, "empty", BTreeMap::new(), data("")).await.is_err());
        let big = SecretBytes::new(vec![1; Kind::Secret.max_size() + 1]);
        assert!(objects.create(Kind::Secret, "big", BTreeMap::new(), big).await.is_err());
        assert!(store.range("").await.unwrap().entries.is_empty());
    }

    #[tokio::test]
    async fn filters_follow_docker() {
        let (_d, _s, objects) = objects().await;
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        objects.create(Kind::Secret, "web_key", labels(&[("env", "prod")]), data("a")).await.unwrap();
        objects.create(Kind::Secret, "web_cert", labels(&[("env", "dev")]), data("a")).await.unwrap();
        objects.create(Kind::Secret, "db", BTreeMap::new(), data("a")).await.unwrap();
        let names = |records: Vec<ObjectRecord>| records.into_iter().map(|r| r.name).collect::<Vec<_>>();
        let list = |terms: &'static [(&'static str, &'static str)]| {
            let filters = Filters::parse(terms.iter().copied()).unwrap();
            let objects = &objects;
            async move { names(objects.list(Kind::Secret, &filters).await.unwrap()) }
        };
        assert_eq!(list(&[]).await, ["db", "web_cert", "web_key"]);
        assert_eq!(list(&[("name", "web")]).await, ["web_cert", "web_key"]);
        assert_eq!(list(&[("label", "env")]).await, ["web_cert", "web_key"]);
        assert_eq!(list(&[("label", "env=prod")]).await, ["web_key"]);
        assert_eq!(list(&[("name", "db"), ("name", "web_k")]).await, ["db", "web_key"]);
        assert_eq!(list(&[("name", "WEB_C")]).await, ["web_cert"]);
        assert_eq!(list(&[("names", "web")]).await, Vec::<String>::new());
        assert_eq!(list(&[("names", "WEB_KEY"), ("names", "db")]).await, ["db", "web_key"]);
        // `label=env=` is `label=env`: any value.
        assert_eq!(list(&[("label", "env=")]).await, ["web_cert", "web_key"]);
        assert!(Filters::parse([("driver", "x")]).is_err());
    }

    #[tokio::test]
    async fn ls_sorts_naturally() {
        let (_d, _s, objects) = objects().await;
        for name in ["item10", "item2", "Item3", "item1"] {
            objects.create(Kind::Secret, name, BTreeMap::new(), data("a")).await.unwrap();
        }
        let names: Vec<_> =
            objects.list(Kind::Secret, &Filters::default()).await.unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["Item3", "item1", "item2", "item10"]);
    }
}
