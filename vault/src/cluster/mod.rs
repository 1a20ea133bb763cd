//! What a replica knows of the others: its own ID and address, its etcd lease and member
//! record, whether it leads (and by which fencing token), and the listing behind
//! `hush vault members`. The leader runs the singleton jobs (see [`crate::jobs`]).
//!
//! An embedded vault is a cluster of one: it always leads and has no lease.

pub mod election;
pub mod members;
mod presence;

use crate::store::Store;
use crate::store::etcd::{EndpointStatus, EtcdConfig};
use crate::vault::Vault;
use election::{LeaderRecord, Term};
use members::{Member, MemberRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Default `--lease-ttl`: how long a replica that stopped answering keeps its lease (and
/// leadership) before another replica takes over.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// The knobs of the singleton jobs and the lease, from `hush vault serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub lease_ttl: Duration,
    /// Versions kept per secret or config, the current one included (0: all).
    pub keep_versions: usize,
    /// How often the leader compacts etcd's history (`None`: never).
    pub compaction_interval: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            lease_ttl: DEFAULT_LEASE_TTL,
            keep_versions: crate::jobs::prune::DEFAULT_KEEP,
            compaction_interval: Some(crate::jobs::compact::DEFAULT_INTERVAL),
        }
    }
}

/// Where the shared state lives.
#[derive(Clone)]
pub enum Backend {
    Embedded,
    Etcd(Arc<EtcdBackend>),
}

/// An etcd store's client (leases, the campaign, compaction), key prefix and URL.
pub struct EtcdBackend {
    pub client: etcd_client::Client,
    pub prefix: String,
    pub config: EtcdConfig,
}

pub struct Cluster {
    pub replica_id: String,
    pub address: String,
    pub settings: Settings,
    backend: Backend,
    /// The lease this replica holds (etcd only; `None` while it has none).
    lease: watch::Receiver<Option<i64>>,
    lease_tx: watch::Sender<Option<i64>>,
    /// `Some` while this replica believes it leads.
    term: watch::Sender<Option<Term>>,
}

/// The whole listing `hush vault members` prints.
pub struct Listing {
    pub store: String,
    pub members: Vec<Member>,
    pub endpoints: Vec<(String, Result<EndpointStatus, String>)>,
}

impl Cluster {
    pub fn new(replica_id: String, address: String, backend: Backend, settings: Settings) -> Self {
        let (lease_tx, lease) = watch::channel(None);
        Self { replica_id, address, settings, backend, lease, lease_tx, term: watch::Sender::new(None) }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// How often leases are renewed, members heartbeat and the leader looks at its jobs.
    pub fn period(&self) -> Duration {
        self.settings.lease_ttl / 3
    }

    /// The term this replica leads in, if it believes it does (the fence decides).
    pub fn term(&self) -> Option<Term> {
        *self.term.borrow()
    }

    pub fn watch_term(&self) -> watch::Receiver<Option<Term>> {
        self.term.subscribe()
    }

    fn leader_record(&self) -> LeaderRecord {
        LeaderRecord { replica: self.replica_id.clone(), address: self.address.clone(), since: chrono::Utc::now() }
    }

    /// Starts the lease (etcd), the campaign and, while leading, the singleton jobs, until
    /// the vault begins to stop.
    pub fn start(self: &Arc<Self>, vault: Arc<Vault>) {
        let record = MemberRecord::new(&self.replica_id, &self.address);
        match &self.backend {
            Backend::Embedded => {
                let store = vault.store().clone();
                tokio::spawn(async move {
                    let value = serde_json::to_vec(&record).expect("record serialises");
                    let _ = store.commit(crate::store::Txn::new().put(members::member_key(&record.id), value)).await;
                });
            }
            Backend::Etcd(etcd) => {
                let run = presence::run(
                    etcd.client.clone(),
                    etcd.prefix.clone(),
                    record,
                    self.settings.lease_ttl,
                    self.lease_tx.clone(),
                    vault.stopping(),
                );
                tokio::spawn(run);
            }
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut stopping = vault.stopping();
            tokio::select! {
                _ = cluster.lead_forever(&vault) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
            cluster.term.send_replace(None);
        });
    }

    /// Campaign, lead until fenced out, campaign again.
    async fn lead_forever(&self, vault: &Arc<Vault>) {
        loop {
            let term = match &self.backend {
                Backend::Embedded => match election::lead_alone(vault.store().as_ref(), &self.leader_record()).await {
                    Ok(term) => term,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot record this vault as leader; trying again");
                        tokio::time::sleep(self.period()).await;
                        continue;
                    }
                },
                Backend::Etcd(etcd) => {
                    let mut lease = self.lease.clone();
                    let record = self.leader_record();
                    election::campaign(&etcd.client, &etcd.prefix, &record, &mut lease, self.settings.lease_ttl).await
                }
            };
            tracing::info!(token = term.token, "this replica leads: fencing token {}", term.token);
            self.term.send_replace(Some(term));
            crate::jobs::lead(vault, self, term).await;
            self.term.send_replace(None);
        }
    }

    /// Every replica, who leads, and each etcd endpoint's health.
    pub async fn listing(&self, store: &dyn Store) -> Result<Listing, String> {
        match &self.backend {
            Backend::Embedded => {
                let mut members = members::list(store, &self.replica_id, |_| async { false }).await?;
                // The one vault is answering: that is its heartbeat.
                for member in members.iter_mut().filter(|m| m.answering) {
                    member.record.heartbeat_at = chrono::Utc::now();
                }
                Ok(Listing { store: "embedded".into(), members, endpoints: Vec::new() })
            }
            Backend::Etcd(etcd) => {
                let alive = |lease: i64| {
                    let client = etcd.client.clone();
                    async move { lease != 0 && crate::jobs::lease_alive(&client, lease).await }
                };
                let (members, endpoints) =
                    tokio::join!(members::list(store, &self.replica_id, alive), members::endpoints(&etcd.config));
                Ok(Listing { store: etcd.config.url(), members: members?, endpoints })
            }
        }
    }
}
