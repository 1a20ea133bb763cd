//! What an outsider or an unprivileged caller can make the vault spend: refused joins with huge
//! fields, floods of half-open connections, audit queries and follow streams. Each attack is
//! made for real against a running vault; figures are printed, never asserted as timings.

use hush_proto::v1 as pb;
use hush_proto::v1::node_client::NodeClient;
use hush_tests::{TestAgent, TestVault, wait_for};
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A TLS channel without a client certificate (as a joining agent has), from `from`.
async fn anonymous_channel(vault: &TestVault, from: &str) -> Channel {
    let ca = std::fs::read_to_string(vault.admin_dir().join("ca.pem")).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    Endpoint::from_shared(format!("https://{}", vault.addr))
        .unwrap()
        .local_address(Some(from.parse().unwrap()))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| entries.map(|e| e.unwrap().metadata().unwrap().len()).sum())
}

fn audit_json(vault: &TestVault) -> Vec<Value> {
    serde_json::from_str::<Value>(vault.hush(&["audit", "--format", "json"]).ok()).unwrap().as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_joins_with_huge_fields_cost_bounded_log_and_audit_bytes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let vault = TestVault::start_new();
    let token = vault.hush(&["node", "join-token", "-q"]).ok().trim().to_string();
    // The right fingerprint with a wrong secret: the vault checks it (a malformed token would
    // be refused before any lookup).
    let (head, _) = token.rsplit_once('-').unwrap();
    let wrong = format!("{head}-{}", "x".repeat(25));
    let audit_dir = vault.data_dir.join("audit");
    let (audit_before, log_before) = (dir_bytes(&audit_dir), vault.log_text().len() as u64);

    let channel = anonymous_channel(&vault, "127.0.0.2").await;
    const JOINS: usize = 1000;
    let mut codes = Vec::new();
    for i in 0..JOINS {
        // The first few carry a 3 MiB hostname (as in the report); the rest 64 KiB fields, so
        // the test spends its time in the vault, not in encrypting megabytes.
        let big = if i < 20 { 3 << 20 } else { 64 << 10 };
        let request = pb::JoinRequest {
            token: wrong.clone(),
            csr_pem: "C".repeat(64 << 10),
            hostname: format!("h{}\n\u{1b}[2J", "o".repeat(big)),
        };
        let status = NodeClient::new(channel.clone()).join(request).await.unwrap_err();
        codes.push(status.code());
    }
    let checked = codes.iter().filter(|c| **c == tonic::Code::Unauthenticated).count();
    let throttled = codes.iter().filter(|c| **c == tonic::Code::ResourceExhausted).count();
    assert_eq!(checked + throttled, JOINS, "{codes:?}");
    assert!(throttled >= JOINS - 50, "the address was not throttled: {checked} checked");

    // Every refusal is accounted for: one entry each for those checked, counts for the rest.
    let entries = wait_for("the throttled joins' count", || {
        let entries = audit_json(&vault);
        let counted: u64 = entries
            .iter()
            .filter(|e| e["op"] == "denied" && e["actor"] == "joining:127.0.0.2")
            .filter_map(|e| e["count"].as_u64())
            .sum();
        (counted == throttled as u64).then_some(entries)
    });
    let one_by_one =
        entries.iter().filter(|e| e["reason"].as_str().is_some_and(|r| r.starts_with("join from 127.0.0.2"))).count();
    assert_eq!(one_by_one, checked);

    let audit_bytes = dir_bytes(&audit_dir) - audit_before;
    let log_bytes = vault.log_text().len() as u64 - log_before;
    println!(
        "{JOINS} refused joins (20 with a 3 MiB hostname, 980 with 64 KiB fields): {audit_bytes} audit bytes, \
         {log_bytes} vault-log bytes ({checked} checked one by one, {throttled} throttled and counted)"
    );
    assert!(audit_bytes < 64 << 10, "audit log grew by {audit_bytes} bytes");
    assert!(log_bytes < 64 << 10, "vault log grew by {log_bytes} bytes");
    assert!(!vault.log_text().contains('\u{1b}'), "a control character from a hostname reached the log");

    // Another address joins as usual meanwhile.
    let _agent = TestAgent::join(&vault);
}
