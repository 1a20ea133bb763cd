//! Real mount-namespace tests of `task_ns`: each scenario runs in a child process (this test binary,
//! re-executed to run the ignored `scenario_child`), which unshares its mount namespace, applies a plan,
//! prints what it sees and waits, so the parent can check the host both while the task lives and after.
//! Needs root, tmpfs and overlayfs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use hush_agent::task_ns::{self, MountPlan};

const SCENARIO: &str = "HUSH_TASK_NS_SCENARIO";
const MARK: &str = "@@ ";

/// The child side: runs when `SCENARIO` is set. The plan, setup steps (run in the new namespace before
/// `apply`) and actions (after) come as tab-separated lines in environment variables.
#[test]
#[ignore = "helper: run in a child process by the other tests"]
fn scenario_child() {
    let Ok(mode) = std::env::var(SCENARIO) else {
        return;
    };
    if mode != "host-namespace" {
        task_ns::unshare_mount_namespace().expect("unshare");
    }
    for line in lines("HUSH_NS_SETUP") {
        match line.as_slice() {
            [verb, path] if verb == "tmpfs" => {
                let status = Command::new("mount").args(["-t", "tmpfs", "tmpfs", path]).status().unwrap();
                assert!(status.success(), "mount tmpfs on {path}");
            }
            [verb, path, content] if verb == "write" => std::fs::write(path, content).unwrap(),
            [verb, path] if verb == "mkdir" => std::fs::create_dir(path).unwrap(),
            other => panic!("bad setup step {other:?}"),
        }
    }
    let mut plan = MountPlan { secrets_dir: None, files: Vec::new(), mount_root: PathBuf::new() };
    for line in lines("HUSH_NS_PLAN") {
        match line.as_slice() {
            [kind, dir] if kind == "secrets" => plan.secrets_dir = Some(dir.into()),
            [kind, dir] if kind == "root" => plan.mount_root = dir.into(),
            [kind, source, target] if kind == "file" => plan.files.push((source.into(), target.into())),
            other => panic!("bad plan line {other:?}"),
        }
    }
    match task_ns::apply(&plan) {
        Ok(()) => say("apply: ok"),
        Err(e) => say(&format!("apply: {e}")),
    }
    for line in lines("HUSH_NS_ACTIONS") {
        let result = match line.as_slice() {
            [verb, path] if verb == "read" => std::fs::read_to_string(path).map_err(errno),
            [verb, path] if verb == "list" => listing(Path::new(path)).map(|names| names.join(",")).map_err(errno),
            [verb, path, content] if verb == "write" => {
                std::fs::write(path, content).map(|()| "ok".to_owned()).map_err(errno)
            }
            [verb, _] if verb == "cwd" => std::env::current_dir().map(|d| d.display().to_string()).map_err(errno),
            other => panic!("bad action {other:?}"),
        };
        say(&format!("{} {}: {}", line[0], line[1], result.unwrap_or_else(|e| e)));
    }
    say("ready");
    // Stay alive (and the namespace with us) until the parent closes our stdin.
    std::io::stdin().lines().for_each(drop);
}

fn lines(var: &str) -> Vec<Vec<String>> {
    std::env::var(var).unwrap_or_default().lines().map(|l| l.split('\t').map(str::to_owned).collect()).collect()
}

fn say(line: &str) {
    println!("{MARK}{line}");
}

fn errno(e: std::io::Error) -> String {
    format!("error {}", e.raw_os_error().unwrap_or(0))
}

fn listing(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

/// The parent side: a running scenario whose output up to "ready" has been read.
struct Task {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: std::io::Lines<BufReader<ChildStdout>>,
    out: Vec<String>,
}

#[derive(Default)]
struct Scenario {
    mode: &'static str,
    plan: Vec<String>,
    setup: Vec<String>,
    actions: Vec<String>,
}

impl Scenario {
    fn plan(mut self, line: &[&dyn AsRef<Path>]) -> Self {
        self.plan.push(tab(line));
        self
    }
    fn setup(mut self, line: &[&dyn AsRef<Path>]) -> Self {
        self.setup.push(tab(line));
        self
    }
    fn action(mut self, line: &[&dyn AsRef<Path>]) -> Self {
        self.actions.push(tab(line));
        self
    }

    fn start(self) -> Task {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "scenario_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(SCENARIO, if self.mode.is_empty() { "task" } else { self.mode })
            .env("HUSH_NS_PLAN", self.plan.join("\n"))
            .env("HUSH_NS_SETUP", self.setup.join("\n"))
            .env("HUSH_NS_ACTIONS", self.actions.join("\n"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let mut out = Vec::new();
        let mut stdout = BufReader::new(stdout).lines();
        for line in stdout.by_ref() {
            let line = line.unwrap();
            let Some(at) = line.find(MARK) else { continue };
            let said = line[at + MARK.len()..].to_owned();
            if said == "ready" {
                return Task { child, stdin, stdout, out };
            }
            out.push(said);
        }
        let status = child.wait().unwrap();
        panic!("scenario ended ({status}) before ready; said {out:#?}");
    }
}

fn tab(parts: &[&dyn AsRef<Path>]) -> String {
    parts.iter().map(|p| p.as_ref().to_str().unwrap()).collect::<Vec<_>>().join("\t")
}

impl Task {
    /// The result the child printed for `key` (e.g. "read /run/secrets/x").
    fn said(&self, key: &str) -> &str {
        let prefix = format!("{key}: ");
        self.out.iter().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {key:?} in {:#?}", self.out))
    }

    fn assert_applied(&self) {
        assert_eq!(self.said("apply"), "ok");
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        // Read the rest (the test harness's summary) so the child never writes to a closed pipe.
        self.stdout.by_ref().for_each(drop);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "scenario child failed: {status}");
    }
}

/// A fake FUSE mount root with a task's secrets directory and a config file.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("t1/root/run/secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join("db_password"), "s3cret").unwrap();
        std::fs::create_dir_all(dir.path().join("t1/root/etc")).unwrap();
        std::fs::write(dir.path().join("t1/root/etc/app.conf"), "listen 80").unwrap();
        std::fs::create_dir_all(dir.path().join("t2/root/run/secrets")).unwrap();
        Root { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn secrets(&self) -> PathBuf {
        self.path().join("t1/root/run/secrets")
    }
    fn conf(&self) -> PathBuf {
        self.path().join("t1/root/etc/app.conf")
    }
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("hush-test-{}-{nanos}", std::process::id())
}

/// Existence and listing of a host path, to compare before, during and after.
fn host_view(path: &Path) -> Option<Vec<String>> {
    if !path.exists() {
        return None;
    }
    Some(listing(path).unwrap_or_default())
}

#[test]
fn secrets_dir_is_bound_at_run_secrets_and_host_is_untouched() {
    let root = Root::new();
    let before = host_view(Path::new("/run/secrets"));
    let task = Scenario::default()
        .plan(&[&"root", &root.path()])
        .plan(&[&"secrets", &root.secrets()])
        .action(&[&"read", &"/run/secrets/db_password"])
        .action(&[&"list", &"/run/secrets"])
        .start();
    task.assert_applied();
    assert_eq!(task.said("read /run/secrets/db_password"), "s3cret");
    assert_eq!(task.said("list /run/secrets"), "db_password");
    assert_eq!(host_view(Path::new("/run/secrets")), before, "during the task");
    task.finish();
    assert_eq!(host_view(Path::new("/run/secrets")), before, "after the task");
}

#[test]
fn file_at_a_missing_target_never_exists_on_the_host() {
    let root = Root::new();
    let target = PathBuf::from(format!("/etc/{}.conf", unique()));
    let other = PathBuf::from(format!("/etc/{}-written-by-task", unique()));
    let task = Scenario::default()
        .plan(&[&"root", &root.path()])
        .plan(&[&"file", &root.conf(), &target])
        .action(&[&"read", &target])
        .action(&[&"read", &"/etc/hostname"])
        .action(&[&"write", &other, &"x"])
        .start();
    task.assert_applied();
    assert_eq!(task.said(&format!("read {}", target.display())), "listen 80");
    // The rest of /etc is the host's.
    let hostname =
        std::fs::read_to_string("/etc/hostname").unwrap_or_else(|e| format!("error {}", e.raw_os_error().unwrap()));
    assert_eq!(task.said("read /etc/hostname"), hostname.lines().next().unwrap_or_default());
    // Writes into the overlaid directory land in memory.
    assert_eq!(task.said(&format!("write {}", other.display())), "ok");
    assert!(!target.exists() && !other.exists(), "during the task");
    task.finish();
    assert!(!target.exists() && !other.exists(), "after the task");
}

#[test]
fn file_under_missing_directories_never_exists_on_the_host() {
    let root = Root::new();
    let top = PathBuf::from(format!("/opt/{}", unique()));
    assert!(Path::new("/opt").is_dir(), "this test needs /opt");
    let target = top.join("sub/app.conf");
    let task = Scenario::default()
        .plan(&[&"root", &root.path()])
        .plan(&[&"file", &root.conf(), &target])
        .action(&[&"read", &target])
        .action(&[&"list", &top])
        .start();
    task.assert_applied();
    assert_eq!(task.said(&format!("read {}", target.display())), "listen 80");
    assert_eq!(task.said(&format!("list {}", top.display())), "sub");
    assert!(!top.exists(), "during the task");
    task.finish();
    assert!(!top.exists(), "after the task");
}

#[test]
fn file_over_an_existing_host_file_leaves_it_unchanged() {
    let root = Root::new();
    let host = tempfile::tempdir().unwrap();
    let target = host.path().join("existing.conf");
    std::fs::write(&target, "old").unwrap();
    let task = Scenario::default()
        .plan(&[&"root", &root.path()])
        .plan(&[&"file", &root.conf(), &target])
        .action(&[&"read", &target])
        .start();
    task.assert_applied();
    assert_eq!(task.said(&format!("read {}", target.display())), "listen 80");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "old", "during the task");
    task.finish();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "old", "after the task");
}

#[test]
fn mount_root_is_hidden_and_binds_still_read() {
    let root = Root::new();
    let target = PathBuf::from(format!("/etc/{}.conf", unique()));
    let task = Scenario::default()
        .plan(&[&"root", &root.path()])
        .plan(&[&"secrets", &root.secrets()])
        .plan(&[&"file", &root.conf(), &target])
        .action(&[&"list", &root.path()])
        .action(&[&"read", &root.path().join("t2/root/run/secrets")])
        .action(&[&"read", &"/run/secrets/db_password"])
        .action(&[&"read", &target])
        .start();
    task.assert_applied();
    assert_eq!(task.said(&format!("list {}", root.path().display())), "");
    assert_eq!(task.said(&format!("read {}", root.path().join("t2/root/run/secrets").display())), "error 2");
    assert_eq!(task.said("read /run/secrets/db_password"), "s3cret");
    assert_eq!(task.said(&format!("read {}", target.display())), "listen 80");
    task.finish();
    // The host's mount root is as it was.
    assert_eq!(listing(root.path()).unwrap(), ["t1", "t2"]);
}

#[test]
fn binds_are_read_only() {
    let root = Root::new();
    let host = tempfile::tempdir().unwrap();
    let target = host.path().join("app.conf");
    std::fs::write(&target, "old").unwrap();
    let task = Scenario::default()
        .plan(&[&"root", &root.path()])
        .plan(&[&"secrets", &root.secrets()])
        .plan(&[&"file", &root.conf(), &target])
        .action(&[&"write", &"/run/secrets/x", &"new"])
        .action(&[&"write", &"/run/secrets/db_password", &"new"])
        .action(&[&"write", &target, &"new"])
        .start();
    task.assert_applied();
    let erofs = format!("error {}", rustix::io::Errno::ROFS.raw_os_error());
    assert_eq!(task.said("write /run/secrets/x"), erofs);
    assert_eq!(task.said("write /run/secrets/db_password"), erofs);
    assert_eq!(task.said(&format!("write {}", target.display())), erofs);
    task.finish();
    assert_eq!(std::fs::read_to_string(root.secrets().join("db_password")).unwrap(), "s3cret");
    assert!(!root.secrets().join("x").exists());
}

#[test]
fn task_writes_elsewhere_reach_the_host() {
    let root = Root::new();
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("task.log");
    let task = Scenario::default()
        .plan(&[&"root", &root.path()])
        .plan(&[&"secrets", &root.secrets()])
        .plan(&[&"file", &root.conf(), &PathBuf::from(format!("/etc/{}.conf", unique()))])
        .action(&[&"write", &log, &"started"])
        .start();
    task.assert_applied();
    assert_eq!(task.said(&format!("write {}", log.display())), "ok");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "started", "during the task");
    task.finish();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "started", "after the task");
}

#[test]
fn mounts_below_an_overlaid_directory_stay_visible() {
    let root = Root::new();
    let host = tempfile::tempdir().unwrap();
    let sub = host.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(host.path().join("plain"), "host file").unwrap();
    let target = host.path().join("new/app.conf");
    // The tmpfs at sub exists only in the child's namespace, mounted before apply.
    let task = Scenario::default()
        .setup(&[&"tmpfs", &sub])
        .setup(&[&"write", &sub.join("inner"), &"in a submount"])
        .plan(&[&"root", &root.path()])
        .plan(&[&"file", &root.conf(), &target])
        .action(&[&"read", &target])
        .action(&[&"read", &sub.join("inner")])
        .action(&[&"read", &host.path().join("plain")])
        .action(&[&"write", &sub.join("more"), &"x"])
        .start();
    task.assert_applied();
    assert_eq!(task.said(&format!("read {}", target.display())), "listen 80");
    assert_eq!(task.said(&format!("read {}", sub.join("inner").display())), "in a submount");
    assert_eq!(task.said(&format!("read {}", host.path().join("plain").display())), "host file");
    assert_eq!(task.said(&format!("write {}", sub.join("more").display())), "ok");
    assert!(!host.path().join("new").exists(), "during the task");
    task.finish();
    assert_eq!(listing(host.path()).unwrap(), ["plain", "sub"]);
    assert!(listing(&sub).unwrap().is_empty(), "the submount never reached the host");
}

#[test]
fn a_missing_source_is_an_error_naming_it() {
    let root = Root::new();
    let source = root.path().join("t1/root/etc/missing.conf");
    let task =
        Scenario::default().plan(&[&"root", &root.path()]).plan(&[&"file", &source, &"/etc/missing.conf"]).start();
    assert_eq!(
        task.said("apply"),
        format!("cannot bind {} at /etc/missing.conf: clone the source: No such file or directory", source.display())
    );
    task.finish();
}

/// What a task under a rebuilt `/` must still have: `/proc` of its own, the host's files and mounts, the
/// FUSE mount root hidden, the working directory kept, writes below `/` reaching the host.
fn assert_root_still_works(task: &Task, root: &Root, data: &Path) {
    let status = task.said("read /proc/self/status");
    assert!(status.starts_with("Name:"), "/proc/self/status in the task: {status:?}");
    let hostname =
        std::fs::read_to_string("/etc/hostname").unwrap_or_else(|e| format!("error {}", e.raw_os_error().unwrap()));
    assert_eq!(task.said("read /etc/hostname"), hostname.lines().next().unwrap_or_default());
    assert_eq!(task.said(&format!("list {}", root.path().display())), "", "the mount root is hidden");
    assert_eq!(task.said("read /run/secrets/db_password"), "s3cret");
    assert_eq!(task.said("cwd ."), std::env::current_dir().unwrap().display().to_string());
    assert_eq!(task.said(&format!("write {}", data.join("log").display())), "ok");
    assert_eq!(std::fs::read_to_string(data.join("log")).unwrap(), "from the task", "a write below / reaches the host");
}

/// A scenario binding the config at each of `targets` (in order), with the checks of
/// [`assert_root_still_works`].
fn root_scenario(root: &Root, data: &Path, targets: &[&Path]) -> Scenario {
    let mut scenario = Scenario::default().plan(&[&"root", &root.path()]).plan(&[&"secrets", &root.secrets()]);
    for target in targets {
        scenario = scenario.plan(&[&"file", &root.conf(), target]).action(&[&"read", target]);
    }
    scenario
        .action(&[&"read", &"/proc/self/status"])
        .action(&[&"read", &"/etc/hostname"])
        .action(&[&"list", &root.path()])
        .action(&[&"read", &"/run/secrets/db_password"])
        .action(&[&"cwd", &"."])
        .action(&[&"write", &data.join("log"), &"from the task"])
}

#[test]
fn file_directly_under_root_never_exists_on_the_host() {
    let root = Root::new();
    let data = tempfile::tempdir().unwrap();
    let target = PathBuf::from(format!("/{}.conf", unique()));
    let task = root_scenario(&root, data.path(), &[&target]).action(&[&"list", &"/"]).start();
    task.assert_applied();
    assert_eq!(task.said(&format!("read {}", target.display())), "listen 80");
    assert_root_still_works(&task, &root, data.path());
    // `/` shows the host's entries plus the target.
    let mut expected = listing(Path::new("/")).unwrap();
    expected.push(target.file_name().unwrap().to_str().unwrap().to_owned());
    expected.sort();
    assert_eq!(task.said("list /"), expected.join(","));
    assert!(!target.exists(), "during the task");
    task.finish();
    assert!(!target.exists(), "after the task");
    assert_eq!(listing(root.path()).unwrap(), ["t1", "t2"]);
}

#[test]
fn file_under_a_missing_top_level_directory_never_exists_on_the_host() {
    let root = Root::new();
    let data = tempfile::tempdir().unwrap();
    let top = PathBuf::from(format!("/{}", unique()));
    let target = top.join("sub/x");
    // Also a target in an overlay of /etc, made before / is rebuilt: it must survive the rebuild.
    let etc_target = PathBuf::from(format!("/etc/{}/app.conf", unique()));
    let task = root_scenario(&root, data.path(), &[&etc_target, &target, &top.join("sub/y")])
        .action(&[&"list", &top.join("sub")])
        .start();
    task.assert_applied();
    assert_eq!(task.said(&format!("read {}", target.display())), "listen 80");
    assert_eq!(task.said(&format!("read {}", etc_target.display())), "listen 80");
    assert_eq!(task.said(&format!("list {}", top.join("sub").display())), "x,y");
    assert_root_still_works(&task, &root, data.path());
    assert!(!top.exists() && !etc_target.parent().unwrap().exists(), "during the task");
    task.finish();
    assert!(!top.exists() && !etc_target.parent().unwrap().exists(), "after the task");
}

#[test]
fn rebuilt_root_keeps_mounts_and_hides_a_mounted_mount_root() {
    // The mount root is a real mount here (a tmpfs in the child's namespace, like the FUSE mount), below a
    // directory that is itself a mount: both must come along into the new root, the mount root hidden.
    let host = tempfile::tempdir().unwrap();
    let sub = host.path().join("sub");
    let mount_root = sub.join("hush");
    std::fs::create_dir(&sub).unwrap();
    let target = PathBuf::from(format!("/{}.conf", unique()));
    let task = Scenario::default()
        .setup(&[&"tmpfs", &sub])
        .setup(&[&"write", &sub.join("inner"), &"in a submount"])
        .setup(&[&"mkdir", &mount_root])
        .setup(&[&"tmpfs", &mount_root])
        .setup(&[&"write", &mount_root.join("db_password"), &"s3cret"])
        .plan(&[&"root", &mount_root])
        .plan(&[&"file", &mount_root.join("db_password"), &target])
        .action(&[&"read", &target])
        .action(&[&"read", &sub.join("inner")])
        .action(&[&"list", &mount_root])
        .action(&[&"list", &"/proc/self/fd"])
        .start();
    task.assert_applied();
    assert_eq!(task.said(&format!("read {}", target.display())), "s3cret");
    assert_eq!(task.said(&format!("read {}", sub.join("inner").display())), "in a submount");
    assert_eq!(task.said(&format!("list {}", mount_root.display())), "");
    assert!(!task.said("list /proc/self/fd").starts_with("error"));
    assert!(!target.exists(), "during the task");
    task.finish();
    assert!(!target.exists(), "after the task");
    assert!(listing(&sub).unwrap().is_empty(), "the submount never reached the host");
}

#[test]
fn apply_refuses_the_host_namespace() {
    // The source does not exist, so even a broken guard could not mount anything on the host.
    let root = Root::new();
    let task = Scenario { mode: "host-namespace", ..Scenario::default() }
        .plan(&[&"root", &root.path()])
        .plan(&[&"file", &root.path().join("nope"), &"/etc/nope.conf"])
        .start();
    assert_eq!(
        task.said("apply"),
        "refusing to mount outside the task's mount namespace (unshare_mount_namespace was not called)"
    );
    task.finish();
}

#[test]
fn mount_root_inside_the_overlaid_directory() {
    // Like /run/hush (a FUSE mount) when /run/secrets is missing and /run gets overlaid: here a tmpfs
    // mount root at <host>/hush, mounted in the child's namespace only, and a target <host>/secrets.
    let host = tempfile::tempdir().unwrap();
    let mount_root = host.path().join("hush");
    std::fs::create_dir(&mount_root).unwrap();
    let target = host.path().join("secrets");
    let source = mount_root.join("db_password");
    let task = Scenario::default()
        .setup(&[&"tmpfs", &mount_root])
        .setup(&[&"write", &source, &"s3cret"])
        .plan(&[&"root", &mount_root])
        .plan(&[&"file", &source, &target])
        .action(&[&"read", &target])
        .action(&[&"list", &mount_root])
        .action(&[&"list", &host.path()])
        .start();
    task.assert_applied();
    assert_eq!(task.said(&format!("read {}", target.display())), "s3cret");
    assert_eq!(task.said(&format!("list {}", mount_root.display())), "");
    assert_eq!(task.said(&format!("list {}", host.path().display())), "hush,secrets");
    assert!(!target.exists(), "during the task");
    task.finish();
    assert_eq!(listing(host.path()).unwrap(), ["hush"]);
    assert!(listing(&mount_root).unwrap().is_empty());
}
