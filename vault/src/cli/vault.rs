//! `hush vault init|serve|unlock|rotate-key`.

use super::output::Format;
use super::{Connection, call_error};
use crate::client::{connect_admin, connect_admin_for_unlock};
use crate::cluster::{Backend, Cluster, EtcdBackend};
use crate::hardening::{disable_core_dumps, lock_memory};
use crate::init::{InitOptions, init};
use crate::layout::DataDir;
use crate::replica::{self, StoreArgs};
use crate::server::serve_vault;
use crate::vault::Vault;
use anyhow::Context;
use clap::Subcommand;
use hush_proto::v1 as pb;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Create a vault: key hierarchy, CA, server certificate and an admin client bundle
    Init {
        #[arg(long, env = "HUSH_DATA_DIR", default_value = "/var/lib/hush")]
        data_dir: PathBuf,
        /// Derive the key-encryption key from an unlock key (printed once) instead of a key file;
        /// needs --admin-dir outside the data dir
        #[arg(long)]
        autolock: bool,
        /// Where to write the admin client bundle (default DATA_DIR/admin; required with --autolock)
        #[arg(long, value_name = "DIR")]
        admin_dir: Option<PathBuf>,
        /// Address or name clients use to reach this vault (repeatable); added to its certificate
        #[arg(long = "advertise-addr", value_name = "HOST[:PORT]")]
        advertise: Vec<String>,
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Serve a vault over mutual TLS
    Serve {
        #[arg(long, env = "HUSH_DATA_DIR", default_value = "/var/lib/hush")]
        data_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: String,
        /// With --store etcd://...: an address or name this replica is reached by (repeatable);
        /// its own server certificate is issued for these (and localhost) when it unlocks
        #[arg(long = "advertise-addr", value_name = "HOST[:PORT]")]
        advertise: Vec<String>,
        #[command(flatten)]
        store: StoreFlags,
        #[command(flatten)]
        cluster: ClusterFlags,
    },
    /// List the vault's replicas (address, leader, last heartbeat) and its etcd endpoints' health
    Members {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Move an embedded vault into etcd: every object and version, nodes, services, join tokens,
    /// keys and CA, and the audit log. The vault must be stopped; the target prefix must be empty
    Migrate {
        /// The embedded vault: redb:DATA_DIR
        #[arg(long, value_name = "redb:DIR")]
        from: String,
        /// Where to: etcd://HOST:PORT[,HOST:PORT...][/PREFIX]
        #[arg(long, value_name = "URL")]
        to: String,
        #[command(flatten)]
        tls: EtcdTlsFlags,
    },
    /// Unlock an autolocked vault after a restart (reads the unlock key from standard input)
    Unlock {
        #[command(flatten)]
        connection: Connection,
    },
    /// New key-encryption key (and unlock key, if autolocked); the data key is re-wrapped
    RotateKey {
        #[command(flatten)]
        connection: Connection,
    },
}

/// Where the vault's data lives.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreFlags {
    /// Keep the data in etcd instead of the data dir: etcd://HOST:PORT[,HOST:PORT...][/PREFIX]
    /// (prefix /hush by default). Several replicas may serve one etcd store
    #[arg(long, env = "HUSH_STORE", value_name = "URL")]
    store: Option<String>,
    #[command(flatten)]
    tls: EtcdTlsFlags,
}

/// TLS to etcd: the same three flags wherever a command reaches etcd.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdTlsFlags {
    /// CA certificate (PEM) that signed etcd's server certificates: TLS to etcd
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth
    #[arg(long, value_name = "FILE")]
    etcd_cert: Option<PathBuf>,
    /// Key (PEM) of --etcd-cert
    #[arg(long, value_name = "FILE")]
    etcd_key: Option<PathBuf>,
}

impl EtcdTlsFlags {
    /// The store arguments for `store` reached with these flags.
    fn store_args(self, store: Option<String>) -> StoreArgs {
        StoreArgs { store, etcd_ca: self.etcd_ca, etcd_cert: self.etcd_cert, etcd_key: self.etcd_key }
    }
}

/// Leadership and the singleton jobs the leader runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterFlags {
    /// With --store etcd://...: how long a replica that stops answering keeps its lease (its
    /// place as leader) before another replica takes over
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_lease_ttl)]
    lease_ttl: std::time::Duration,
    /// Versions kept per secret or config, the current one included; older ones are removed
    /// once superseded for 10 minutes (0 keeps every version)
    #[arg(long, value_name = "N", default_value_t = crate::jobs::prune::DEFAULT_KEEP)]
    keep_versions: usize,
    /// With --store etcd://...: how often the leader compacts etcd's history, keeping one
    /// interval of it (0 never compacts)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    etcd_compaction_interval: std::time::Duration,
}

fn parse_lease_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 10s)"))?;
    if !(2..=300).contains(&ttl.as_secs()) || ttl.subsec_nanos() != 0 {
        return Err("the lease TTL must be whole seconds, from 2s to 300s".into());
    }
    Ok(ttl)
}

impl ClusterFlags {
    fn settings(&self) -> crate::cluster::Settings {
        crate::cluster::Settings {
            lease_ttl: self.lease_ttl,
            keep_versions: self.keep_versions,
            compaction_interval: (!self.etcd_compaction_interval.is_zero()).then_some(self.etcd_compaction_interval),
        }
    }
}

/// Where others reach this replica: its first `--advertise-addr` (with the listening port if
/// it names none), else the address it listens on (the host's name for a wildcard address).
fn member_address(advertise: &[String], bound: std::net::SocketAddr) -> String {
    match advertise.first() {
        Some(addr) if hush_proto::addr::host_of(addr) != addr.as_str() => addr.clone(),
        Some(host) if host.contains(':') => format!("[{host}]:{}", bound.port()),
        Some(host) => format!("{host}:{}", bound.port()),
        None if bound.ip().is_unspecified() => {
            let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
            format!("{host}:{}", bound.port())
        }
        None => bound.to_string(),
    }
}

impl StoreFlags {
    fn etcd(&self) -> anyhow::Result<Option<crate::store::etcd::EtcdConfig>> {
        Ok(self.tls.clone().store_args(self.store.clone()).etcd()?)
    }
}

pub async fn run(command: VaultCommand) -> anyhow::Result<ExitCode> {
    match command {
        VaultCommand::Init { data_dir, autolock, advertise, admin_dir, store } => {
            let dir = DataDir::new(&data_dir);
            let etcd = store.etcd()?;
            let shared = match &etcd {
                Some(config) => {
                    let shared = replica::connect(config).await?;
                    replica::ensure_vacant(&shared, &config.url()).await?;
                    Some((shared, config.url()))
                }
                None => None,
            };
            let options = InitOptions { autolock, advertise, admin_dir, external_store: shared.is_some() };
            let done = init(&dir, &options)?;
            if let Some((shared, url)) = &shared {
                replica::publish(&dir, shared, url).await?;
                println!("Vault data kept in {url}");
            }
            println!("Vault initialised in {}", data_dir.display());
            println!("CA fingerprint: sha256:{}", done.ca_fingerprint);
            println!("Admin TLS bundle: {}", done.admin_dir.display());
            println!();
            let store_flag = etcd.as_ref().map(|c| format!(" --store {}", c.url())).unwrap_or_default();
            println!("Start it with:  hush vault serve --data-dir {}{store_flag}", data_dir.display());
            println!("Use it with:    export HUSH_VAULT=127.0.0.1:7443 HUSH_TLS_DIR={}", done.admin_dir.display());
            if let Some(key) = done.unlock_key {
                print_unlock_key(key.expose_secret());
            }
        }
        VaultCommand::Serve { data_dir, listen, advertise, store, cluster } => {
            disable_core_dumps();
            lock_memory();
            let dir = DataDir::new(&data_dir);
            // Open before listening, so a bad data dir fails before anything is announced.
            let advertised = advertise.clone();
            let (vault, backend) = match store.etcd()? {
                None => {
                    anyhow::ensure!(
                        advertise.is_empty(),
                        "--advertise-addr on serve needs --store etcd://... (an embedded vault's certificate is made by init)"
                    );
                    (Arc::new(Vault::open(&dir)?), Backend::Embedded)
                }
                Some(config) => {
                    let shared = replica::connect(&config).await?;
                    replica::fetch(&dir, &shared, &config.url()).await?;
                    let etcd = EtcdBackend { client: shared.client(), prefix: shared.prefix().to_string(), config };
                    let backend = Backend::Etcd(Arc::new(etcd));
                    (Arc::new(Vault::open_on(&dir, Arc::new(shared), Some(advertise.clone()))?), backend)
                }
            };
            if vault.is_locked() {
                tracing::warn!("vault is autolocked: it serves nothing until `hush vault unlock`");
            }
            let listener =
                tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            if store.store.is_some() {
                // Where agents reach this replica: join tokens list every replica's.
                let addrs = replica::advertise_addrs(&advertised, listener.local_addr()?);
                let id = replica::replica_id(&dir)?;
                replica::publish_advertised(vault.store().as_ref(), &id, &addrs).await?;
            }
            let id = replica::replica_id(&dir)?;
            let address = member_address(&advertise, listener.local_addr()?);
            vault.start_cluster(Cluster::new(id, address, backend, cluster.settings()));
            serve_vault(vault, &dir, listener_announced(listener)?, shutdown_signal()).await?;
        }
        VaultCommand::Migrate { from, to, tls } => {
            let dir = DataDir::new(crate::migrate::source_dir(&from)?);
            let config = tls.store_args(Some(to)).etcd()?.expect("--to is given");
            let target = replica::connect(&config).await?;
            let url = config.url();
            let done = crate::migrate::migrate(&dir, &target, &url, |step| eprintln!("migrate: {step}")).await?;
            println!(
                "Migrated {} keys ({} bytes) and {} audit entries (chain {}) to {url}",
                done.keys, done.bytes, done.audit_entries, done.chain
            );
            println!(
                "Serve it with:  hush vault serve --store {url} --data-dir NEW_DIR   (NEW_DIR: a copy of {}'s kek-*.key, or empty with autolock and `hush vault unlock`)",
                dir.root().display()
            );
        }
        VaultCommand::Members { connection, format } => {
            let mut client = connect_admin(&connection.target()).await?;
            let listing = client.members(pb::MembersRequest {}).await.map_err(call_error)?.into_inner();
            super::members::print(&listing, format)?;
        }
        VaultCommand::Unlock { connection } => {
            if std::io::stdin().is_terminal() {
                eprint!("Unlock key: ");
                std::io::stderr().flush().ok();
            }
            let mut key = zeroize::Zeroizing::new(String::new());
            std::io::stdin().lock().read_line(&mut key).context("cannot read the unlock key from standard input")?;
            // A locked vault can only present its unlock-only identity: ask for that one.
            let mut client = connect_admin_for_unlock(&connection.target()).await?;
            client.unlock(pb::UnlockRequest { unlock_key: key.trim().to_string() }).await.map_err(call_error)?;
            println!("Vault unlocked");
        }
        VaultCommand::RotateKey { connection } => {
            let mut client = connect_admin(&connection.target()).await?;
            let response = client.rotate_key(pb::RotateKeyRequest {}).await.map_err(call_error)?.into_inner();
            println!("Key-encryption key rotated");
            if !response.unlock_key.is_empty() {
                print_unlock_key(&response.unlock_key);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn listener_announced(listener: tokio::net::TcpListener) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "vault listening");
    println!("hush vault listening on {addr}");
    std::io::stdout().flush().ok();
    Ok(listener)
}

fn print_unlock_key(key: &str) {
    println!();
    println!("This vault is autolocked. After every restart, run `hush vault unlock` and enter this unlock key:");
    println!();
    println!("    {key}");
    println!();
    println!("It is shown only this once and cannot be recovered: keep it somewhere safe.");
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
