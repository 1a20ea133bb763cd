//! Changes past etcd's 128 operations per transaction (its default `--max-txn-ops`), on real
//! etcd: `node join-token --rotate` with 130 outstanding tokens revokes them all, and a
//! SyncTasks that ends 130 tasks ends them all.

use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use hush_tests::TestVault;
use hush_tests::etcd::EtcdCluster;
use hush_tests::node_client;
use hush_vault::client::{TlsBundle, connect_channel};

/// More than etcd's default `--max-txn-ops` (128).
const MANY: usize = 130;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_130_tokens_and_ending_130_tasks_fit_etcd() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = EtcdCluster::start(1);
    let url = cluster.url("/habig");
    let mut vault = TestVault::init(&["--store", &url]);
    vault.serve_args = vec!["--store".into(), url.clone()];
    vault.start();
    let bundle = TlsBundle::read(&vault.admin_dir()).expect("admin bundle");
    let mut admin = AdminClient::new(connect_channel(&vault.addr, &bundle).await.expect("admin connects"));
    let ca_pem = String::from_utf8(bundle.ca.clone()).expect("ca.pem");

    let mut tokens = Vec::new();
    for _ in 0..MANY {
        let minted = admin.join_token(pb::JoinTokenRequest::default()).await.expect("token minted").into_inner();
        tokens.push(minted.token);
    }
    let rotated = admin
        .join_token(pb::JoinTokenRequest { rotate: true, ..Default::default() })
        .await
        .expect("--rotate with 130 outstanding tokens")
        .into_inner();
    assert_eq!(rotated.revoked as usize, MANY, "every outstanding token revoked");
    let listed = admin.join_token_list(pb::JoinTokenListRequest {}).await.expect("listed").into_inner();
    assert_eq!(listed.tokens.len(), 1, "only the new token is left");
    for old in [&tokens[0], &tokens[MANY - 1]] {
        let refused = node_client::join(&vault.addr, old, &ca_pem, "old", None).await.err().expect("refused");
        assert!(refused.contains("wrong or has been revoked"), "{refused}");
    }
    let node = node_client::join(&vault.addr, &rotated.token, &ca_pem, "n1", None).await.expect("the new one joins");

    // 130 tasks on the node, then a SyncTasks saying none of them runs any more.
    let create = pb::CreateRequest {
        kind: pb::Kind::Secret as i32,
        name: "s".into(),
        data: b"v".to_vec(),
        ..Default::default()
    };
    admin.create(create).await.expect("secret created");
    let service = pb::ServiceCreateRequest { name: "web".into(), secrets: vec!["s".into()], ..Default::default() };
    admin.service_create(service).await.expect("service created");
    let mut client = node.client(&vault.addr);
    for _ in 0..MANY {
        let start = pb::StartTaskRequest { service: "web".into(), ..Default::default() };
        client.start_task(start).await.expect("task started");
    }
    let tasks = |nodes: pb::NodeListResponse| nodes.nodes.iter().map(|n| n.tasks as usize).sum::<usize>();
    let before = admin.node_list(pb::NodeListRequest {}).await.expect("nodes").into_inner();
    assert_eq!(tasks(before), MANY);
    client.sync_tasks(pb::SyncTasksRequest { running: vec![] }).await.expect("SyncTasks ending 130 tasks");
    let after = admin.node_list(pb::NodeListRequest {}).await.expect("nodes").into_inner();
    assert_eq!(tasks(after), 0, "every task ended");
}
