//! `hush secret import` / `hush config import` of Kubernetes manifests and `hush config export
//! --format k8s`, against a real vault: one object per key, labels kept, all or nothing,
//! re-imports that change nothing, changed values rotated, errors naming the document and key.

use hush_tests::TestVault;

const MANIFESTS: &str = r#"apiVersion: v1
kind: Secret
metadata:
  name: db
  labels: {app: shop}
data:
  password: czNjcjN0
stringData:
  user: admin
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web}
data:
  nginx.conf: "listen 80;\n"
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Secret
    metadata: {name: tls}
    type: kubernetes.io/tls
    stringData: {tls.crt: CERT, tls.key: KEY}
  - apiVersion: v1
    kind: Secret
    metadata: {name: registry}
    type: kubernetes.io/dockerconfigjson
    stringData:
      .dockerconfigjson: '{"auths": {}}'
"#;

fn write(vault: &TestVault, name: &str, text: &str) -> String {
    let path = vault.temp.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn names(vault: &TestVault, kind: &str) -> String {
    vault.hush(&[kind, "ls", "--format", "{{.Name}} {{.Labels}}"]).ok().to_string()
}

#[test]
fn kubernetes_secrets_and_configmaps_import_and_export() {
    let vault = TestVault::start_new();
    let file = write(&vault, "all.yaml", MANIFESTS);
    let run = vault.hush(&["secret", "import", "-f", &file]);
    assert_eq!(
        run.ok(),
        "Creating secret db_password\nCreating secret db_user\nCreating secret tls_tls.crt\nCreating secret tls_tls.key\nCreating secret registry_.dockerconfigjson\n"
    );
    assert_eq!(run.stderr, "note: skipping document 2 (ConfigMap web): not a Secret: use hush config import\n");
    assert_eq!(
        names(&vault, "secret"),
        "db_password app=shop,hush.k8s.key=password,hush.k8s.name=db\n\
         db_user app=shop,hush.k8s.key=user,hush.k8s.name=db\n\
         registry_.dockerconfigjson hush.k8s.key=.dockerconfigjson,hush.k8s.name=registry\n\
         tls_tls.crt hush.k8s.key=tls.crt,hush.k8s.name=tls\n\
         tls_tls.key hush.k8s.key=tls.key,hush.k8s.name=tls\n"
    );

    // Unchanged: nothing happens; a changed value is a rotation.
    assert_eq!(vault.hush(&["secret", "import", "-f", &file]).ok(), "Nothing changed: 5 secrets are up to date\n");
    let changed = write(&vault, "changed.yaml", &MANIFESTS.replace("user: admin", "user: root"));
    assert_eq!(vault.hush(&["secret", "import", "-f", &changed]).ok(), "Rotating secret db_user (version 2)\n");

    // Configs: imported from the same file, exported back, re-imported as a no-op.
    let run = vault.hush(&["config", "import", "-f", &file, "--name-template", "{{.Key}}"]);
    assert_eq!(run.ok(), "Creating config nginx.conf\n");
    assert_eq!(run.stderr.lines().count(), 3, "{}", run.stderr);
    assert_eq!(vault.hush(&["config", "inspect", "-f", "{{.Spec.Data}}", "nginx.conf"]).ok(), "bGlzdGVuIDgwOwo=\n");
    let exported = vault.hush(&["config", "export", "nginx.conf", "--format", "k8s"]);
    let exported = write(&vault, "export.yaml", exported.ok());
    let text = std::fs::read_to_string(&exported).unwrap();
    assert!(text.contains("kind: ConfigMap") && text.contains("name: web"), "{text}");
    assert_eq!(
        vault.hush(&["config", "import", "-f", &exported, "--name-template", "{{.Key}}"]).ok(),
        "Nothing changed: 1 config is up to date\n"
    );
    vault.hush(&["secret", "export", "db_password"]).fails_with("a secret's value never leaves the vault");
}

#[test]
fn imports_are_all_or_nothing() {
    let vault = TestVault::start_new();
    let before = names(&vault, "secret");
    // Offline problems: nothing reaches the vault.
    let bad =
        write(&vault, "bad.yaml", &format!("{MANIFESTS}---\nkind: Secret\nmetadata: {{name: x}}\ndata: {{k: '!!'}}\n"));
    vault
        .hush(&["secret", "import", "-f", &bad])
        .fails_with("bad.yaml: document 4 (Secret x): data.k: not valid base64");
    // The vault refuses the second object (a label with an empty key): the first is removed again.
    let refused = write(
        &vault,
        "refused.yaml",
        "kind: Secret\nmetadata: {name: a}\nstringData: {k: v}\n---\nkind: Secret\nmetadata:\n  name: b\n  labels: {'': x}\nstringData: {k: v}\n",
    );
    vault.hush(&["secret", "import", "-f", &refused]).fails_with("document 2 (Secret b), key k: invalid label");
    assert_eq!(names(&vault, "secret"), before);
    // A name taken in another case is refused before anything is created.
    vault.hush_stdin(&["secret", "create", "A_K", "-"], b"v").ok();
    vault.hush(&["secret", "import", "-f", &refused]).fails_with("secret name a_k is taken by A_K");
    assert_eq!(vault.hush(&["secret", "ls", "-q"]).ok().lines().count(), 1);
}
