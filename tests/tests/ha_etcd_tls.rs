//! A vault on an etcd that serves clients only over TLS with client certificates (real etcd,
//! certificates made by the harness with rcgen): `init` and `serve` with `--etcd-ca
//! --etcd-cert --etcd-key` store and serve secrets and configs; a wrong CA, a missing or
//! foreign client certificate, or plain HTTP are each refused with one clear line, and nothing
//! is written by a refused `init`.

use hush_tests::etcd::EtcdCluster;
use hush_tests::{Run, TestVault, bin, marker};
use std::path::Path;
use std::process::Command;

/// A CA and a client certificate it signed, unknown to etcd, written under `dir`.
fn foreign_ca_and_client(dir: &Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["hush-vault".into()]).unwrap().signed_by(&key, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    (write("foreign-ca.pem", ca.pem()), write("foreign.pem", cert.pem()), write("foreign.key", key.serialize_pem()))
}

/// `hush vault serve` on `url` with `flags`, expected to fail; what it printed.
fn serve_refused(data_dir: &Path, url: &str, flags: &[&str]) -> Run {
    Run::from_command(
        Command::new(bin("hush"))
            .args(["vault", "serve", "--listen", "127.0.0.1:0", "--store", url, "--data-dir"])
            .arg(data_dir)
            .args(flags)
            .env_remove("HUSH_LOG"),
    )
}

#[test]
fn a_vault_on_etcd_over_tls_with_client_certificates() {
    let cluster = EtcdCluster::start_tls();
    let tls = cluster.tls_files().unwrap();
    let url = cluster.url("/tls");
    let (ca, cert, key) =
        (tls.ca.to_str().unwrap(), tls.client_cert.to_str().unwrap(), tls.client_key.to_str().unwrap());
    let flags = ["--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key];

    let mut init_args = vec!["--store", url.as_str()];
    init_args.extend(flags);
    let mut vault = TestVault::init(&init_args);
    vault.serve_args = init_args.iter().map(|s| s.to_string()).collect();
    vault.start();
    let (secret, config) = (marker("tls-secret"), marker("tls-config"));
    vault.hush_stdin(&["secret", "create", "db_password", "-"], secret.as_bytes()).ok();
    vault.hush_stdin(&["config", "create", "site", "-"], config.as_bytes()).ok();
    assert!(vault.hush(&["secret", "ls"]).ok().contains("db_password"));
    let inspected = vault.hush(&["config", "inspect", "--pretty", "site"]);
    assert!(inspected.ok().contains(&config), "{}", inspected.stdout);

    // A second replica over TLS sees the same objects.
    let mut replica = TestVault::replica_of(&vault);
    replica.start();
    assert!(replica.hush(&["secret", "ls"]).ok().contains("db_password"));
    replica.hush(&["audit", "verify"]).ok();

    // Refusals, each one line naming the problem, on a fresh data dir.
    let temp = tempfile::tempdir().unwrap();
    let (foreign_ca, foreign_cert, foreign_key) = foreign_ca_and_client(temp.path());
    let dir = temp.path().join("d");
    // (what, flags, what the line must say)
    let cases: [(&str, Vec<&str>, &str); 4] = [
        (
            "a CA that did not sign etcd's certificate",
            vec!["--etcd-ca", &foreign_ca, "--etcd-cert", cert, "--etcd-key", key],
            "does not verify with --etcd-ca",
        ),
        ("no client certificate", vec!["--etcd-ca", ca], "it may require a client certificate"),
        (
            "a client certificate etcd does not trust",
            vec!["--etcd-ca", ca, "--etcd-cert", &foreign_cert, "--etcd-key", &foreign_key],
            "etcd refused the client certificate",
        ),
        ("plain HTTP to a TLS etcd", vec![], "if it serves TLS, give --etcd-ca"),
    ];
    for (what, flags, says) in &cases {
        let run = serve_refused(&dir, &url, flags);
        let line = run.fails_with(says);
        eprintln!("{what}: {line}");
        assert!(line.starts_with(&format!("error: cannot reach etcd at {url}: ")), "{what}: {line}");
        assert!(!line.contains("tonic::") && !line.contains("store I/O error"), "{what}: not one clear line: {line}");
        assert!(!dir.exists(), "{what}: a refused serve wrote {}", dir.display());
    }
    // A client certificate without its key is a usage error, before any connection.
    let run = serve_refused(&dir, &url, &["--etcd-ca", ca, "--etcd-cert", cert]);
    run.fails_with("--etcd-key");
    // init refuses the same way and leaves nothing behind.
    let refused_init = Run::from_command(
        Command::new(bin("hush"))
            .args(["vault", "init", "--store", &url, "--etcd-ca", &foreign_ca, "--data-dir"])
            .arg(&dir),
    );
    refused_init.fails_with("does not verify with --etcd-ca");
    assert!(!dir.exists(), "a refused init wrote {}", dir.display());
}
