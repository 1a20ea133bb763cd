//! Crash safety: `kill -9` during a burst of creates loses nothing that was acknowledged and
//! corrupts nothing.

use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use hush_tests::TestVault;
use hush_vault::client::{TlsBundle, connect_channel};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_creates_loses_nothing_acknowledged() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut vault = TestVault::start_new();
    let bundle = TlsBundle::read(&vault.admin_dir()).unwrap();
    let channel = connect_channel(&vault.addr, &bundle).await.unwrap();
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));

    // 16 writers creating as fast as they can; kill the vault once 300 are acknowledged.
    let mut writers = Vec::new();
    for writer in 0..16 {
        let mut client = AdminClient::new(channel.clone());
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let request = pb::CreateRequest {
                    kind: pb::Kind::Secret as i32,
                    name: format!("w{writer}-{i}"),
                    labels: Default::default(),
                    data: vec![b'v'; 1024],
                };
                match client.create(request).await {
                    Ok(response) => {
                        acknowledged.lock().unwrap().insert(response.into_inner().id);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    hush_tests::wait_for("300 acknowledged creates", || (acknowledged.lock().unwrap().len() >= 300).then_some(()));
    vault.kill9();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    vault.start();
    let listed = vault.hush(&["secret", "ls", "-q"]);
    let stored: HashSet<String> = listed.ok().lines().map(str::to_string).collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged creates lost: {lost:?}", lost.len());
    // Nothing half-written: every stored secret inspects cleanly, and writes still work.
    let any = stored.iter().next().unwrap();
    vault.hush(&["secret", "inspect", any]).ok();
    vault.hush_stdin(&["secret", "create", "after-crash", "-"], b"v").ok();
}
