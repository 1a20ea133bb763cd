//! Security properties end to end: mutual TLS refusals, autolock, no plaintext at rest or in
//! logs, tamper detection, and refusal of an uninitialised data dir.

use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use hush_tests::{Run, TestVault, files_containing, marker};
use hush_vault::client::{TlsBundle, connect_channel};
use hush_vault::layout::DataDir;
use hush_vault::store::redb::RedbStore;
use hush_vault::store::{Store, Txn};
use std::process::Command;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn list_request() -> pb::ListRequest {
    pb::ListRequest { kind: pb::Kind::Secret as i32, filters: vec![] }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_refuses_clients_without_a_certificate_or_from_another_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let vault = TestVault::start_new();
    let bundle = TlsBundle::read(&vault.admin_dir()).unwrap();

    // The right certificate works.
    let mut client = AdminClient::new(connect_channel(&vault.addr, &bundle).await.unwrap());
    client.list(list_request()).await.unwrap();

    // TLS without a client certificate: the handshake may complete, the call must not.
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&bundle.ca)).domain_name("localhost");
    let refused = match Endpoint::from_shared(format!("https://{}", vault.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
    {
        Ok(channel) => AdminClient::new(channel).list(list_request()).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was served");

    // A certificate from another vault's CA (trusting this vault's CA, so only the client side is wrong).
    let other = TestVault::init(&[]);
    let foreign = TlsBundle::read(&other.admin_dir()).unwrap();
    let mixed = TlsBundle { ca: bundle.ca.clone(), cert: foreign.cert, key: foreign.key };
    let refused = match connect_channel(&vault.addr, &mixed).await {
        Ok(channel) => AdminClient::new(channel).list(list_request()).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a certificate from another CA was served");

    // The CLI says so in one line.
    let run = Run::from_command(vault.command().env("HUSH_TLS_DIR", other.admin_dir()).args(["secret", "ls"]));
    assert!(!run.status.success());
    assert!(run.stderr.starts_with("error: "), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
}

#[test]
fn autolocked_vault_serves_nothing_until_unlocked() {
    let mut vault = TestVault::init(&["--autolock"]);
    let key = vault
        .init_stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("HUSHKEY-1-"))
        .expect("init prints the unlock key")
        .to_string();
    assert!(
        !vault.data_dir.join("keyring.json").exists() || files_containing(&vault.data_dir, key.as_bytes()).is_empty()
    );
    vault.start();

    vault.hush(&["secret", "ls"]).fails_with("vault is locked: run `hush vault unlock`");
    vault.hush_stdin(&["secret", "create", "x", "-"], b"v").fails_with("vault is locked");
    vault.hush_stdin(&["vault", "unlock"], b"HUSHKEY-1-wrong\n").fails_with("wrong unlock key");
    vault.hush(&["secret", "ls"]).fails_with("vault is locked");

    assert!(vault.hush_stdin(&["vault", "unlock"], format!("{key}\n").as_bytes()).ok().contains("Vault unlocked"));
    vault.hush_stdin(&["secret", "create", "x", "-"], b"v").ok();

    // After a restart it is locked again; the same key opens it and the data is there.
    vault.stop();
    vault.start();
    vault.hush(&["secret", "ls"]).fails_with("vault is locked");
    vault.hush_stdin(&["vault", "unlock"], key.as_bytes()).ok();
    assert_eq!(vault.hush(&["secret", "ls", "-q"]).ok().lines().count(), 1);

    // rotate-key gives a new unlock key; the old one stops working.
    let rotated = vault.hush(&["vault", "rotate-key"]);
    let new_key =
        rotated.ok().lines().map(str::trim).find(|l| l.starts_with("HUSHKEY-1-")).expect("new key printed").to_string();
    assert_ne!(new_key, key);
    vault.stop();
    vault.start();
    vault.hush_stdin(&["vault", "unlock"], key.as_bytes()).fails_with("wrong unlock key");
    vault.hush_stdin(&["vault", "unlock"], new_key.as_bytes()).ok();
    assert_eq!(vault.hush(&["secret", "ls", "-q"]).ok().lines().count(), 1);
    assert!(files_containing(&vault.data_dir, new_key.as_bytes()).is_empty(), "unlock key stored on disk");
    assert!(!vault.log_text().contains(&new_key), "unlock key in the log");
}

#[test]
fn key_file_rotation_keeps_data_readable() {
    let mut vault = TestVault::start_new();
    vault.hush_stdin(&["config", "create", "c", "-"], b"before-rotation").ok();
    assert!(vault.hush(&["vault", "rotate-key"]).ok().contains("rotated"));
    vault.stop();
    vault.start();
    assert!(vault.hush(&["config", "inspect", "--pretty", "c"]).ok().contains("before-rotation"));
}

#[test]
fn plaintext_never_reaches_the_data_dir_or_the_log() {
    let mut vault = TestVault::start_new();
    let first = marker("first");
    let second = marker("second");
    let config = marker("config");
    vault.hush_stdin(&["secret", "create", "db_password", "-"], first.as_bytes()).ok();
    vault.hush_stdin(&["secret", "rotate", "db_password", "-"], second.as_bytes()).ok();
    vault.hush_stdin(&["config", "create", "app_conf", "-"], config.as_bytes()).ok();
    let inspected = vault.hush(&["secret", "inspect", "db_password"]);
    assert!(!inspected.ok().contains(&second));
    vault.stop();
    for value in [&first, &second, &config] {
        let hits = files_containing(&vault.data_dir, value.as_bytes());
        assert!(hits.is_empty(), "plaintext found in {hits:?}");
    }
    let log = vault.log_text();
    assert!(log.contains("db_password"), "the log records the action: {log}");
    for value in [&first, &second, &config] {
        assert!(!log.contains(value.as_str()), "plaintext in the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn altered_ciphertext_is_detected_and_named() {
    let mut vault = TestVault::start_new();
    vault.hush_stdin(&["config", "create", "nginx_conf", "-"], b"worker_processes 4;").ok();
    vault.hush_stdin(&["config", "create", "other", "-"], b"untouched").ok();
    let id = vault.hush(&["config", "inspect", "nginx_conf"]).ok().to_string();
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    let id = id[0]["ID"].as_str().unwrap().to_string();
    vault.stop();

    // Flip one ciphertext byte of the stored record, as an attacker with disk access would.
    {
        let store = RedbStore::open(&DataDir::new(&vault.data_dir).store()).unwrap();
        let key = format!("config/data/{id}/{:020}", 1);
        let mut entry = store.get(&key).await.unwrap().expect("sealed record");
        let last = entry.value.len() - 1;
        entry.value[last] ^= 0x01;
        store.commit(Txn::new().put(key, entry.value)).await.unwrap();
    }

    vault.start();
    vault
        .hush(&["config", "inspect", "nginx_conf"])
        .fails_with("config nginx_conf version 1 failed its integrity check: the sealed record was altered or moved");
    assert!(vault.hush(&["config", "inspect", "--pretty", "other"]).ok().contains("untouched"));
}

#[test]
fn uninitialised_data_dir_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let run = Run::from_command(
        Command::new(hush_tests::bin("hush"))
            .args(["vault", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(temp.path()),
    );
    run.fails_with(&format!("data dir {} is not initialised", temp.path().display()));
    // And init refuses to overwrite an initialised one.
    let vault = TestVault::init(&[]);
    let run = Run::from_command(
        Command::new(hush_tests::bin("hush")).args(["vault", "init", "--data-dir"]).arg(&vault.data_dir),
    );
    run.fails_with("is already initialised");
}
