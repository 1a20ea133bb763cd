//! Real FUSE mounts: owner-only access across mount namespaces, kernel permission checks,
//! rotation, removal, unmount, stale-mount cleanup and access events. Needs root and /dev/fuse.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use hush_fuse::{
    AccessEvent, AccessOp, DenyReason, FileKind, FileMeta, FileSpec, MountGuard, MountNamespaceOwner, Plaintext,
    SecretFs, TaskOwner, clean_stale_mount, mount, mount_namespace_of,
};

const DEADLINE: Duration = Duration::from_secs(10);

fn plaintext(s: &str) -> Arc<Plaintext> {
    Arc::new(Plaintext::new(s.as_bytes().to_vec()))
}

fn file(path: &str, uid: u32, mode: u32, content: &str) -> FileSpec {
    FileSpec {
        path: path.to_string(),
        uid,
        gid: uid,
        mode,
        content: plaintext(content),
        meta: FileMeta { kind: FileKind::Secret, name: path.rsplit('/').next().unwrap().into(), version: 1 },
        pinned: false,
    }
}

/// A mounted filesystem in a temporary directory, with its event channel.
struct Fixture {
    fs: Arc<SecretFs>,
    events: Receiver<AccessEvent>,
    guard: Option<MountGuard>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, events) = sync_channel(1024);
        let fs = Arc::new(SecretFs::new().with_event_sink(tx));
        let guard = mount(fs.clone(), dir.path()).expect("mount (needs root and /dev/fuse)");
        Fixture { fs, events, guard: Some(guard), dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Events received so far (all are sent before the kernel gets our reply).
    fn drain(&self) -> Vec<AccessEvent> {
        self.events.try_iter().collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Unmount before the tempdir is removed.
        if let Some(g) = self.guard.take() {
            g.unmount().expect("unmount");
        }
    }
}

/// A shell in a new mount namespace (a private copy of the host's mounts, ours included)
/// that runs one command per line we send, like a task's process would.
struct NsShell {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl NsShell {
    fn spawn() -> Self {
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "unchanged", "sh", "-c"])
            .arg(r#"while IFS= read -r c; do eval "$c" 2>&1; echo "__rc=$?"; done"#)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn unshare (util-linux)");
        let stdin = child.stdin.take().unwrap();
        let lines = reader(child.stdout.take().unwrap());
        let mut sh = NsShell { child, stdin, lines };
        // Once a command has run, `unshare` has exec'd sh in its new namespace.
        assert_eq!(sh.run("echo ready"), ("ready".to_string(), 0));
        assert_ne!(
            sh.mnt_ns(),
            mount_namespace_of(std::process::id()).unwrap(),
            "unshare -m gave a new mount namespace"
        );
        sh
    }

    /// The shell's mount namespace inode: what the agent would register as the task's owner.
    fn mnt_ns(&self) -> u64 {
        mount_namespace_of(self.child.id()).expect("shell's namespace")
    }

    /// The shell's namespace, held: what the agent registers as the task's owner.
    fn owner(&self) -> TaskOwner {
        TaskOwner::new(MountNamespaceOwner::of_process(self.child.id()).expect("shell's namespace"))
    }

    /// Run `cmd`; returns its output (stdout and stderr, trimmed) and exit status.
    fn run(&mut self, cmd: &str) -> (String, i32) {
        writeln!(self.stdin, "{cmd}").expect("write command");
        self.stdin.flush().unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {cmd:?}; output so far: {out:?}"));
            // Output without a final newline shares its last line with the marker.
            if let Some((last, rc)) = line.split_once("__rc=") {
                if !last.is_empty() {
                    out.push(last.to_string());
                }
                return (out.join("\n"), rc.parse().unwrap());
            }
            out.push(line);
        }
    }
}

impl Drop for NsShell {
    fn drop(&mut self) {
        // Our namespace's copy of the mount keeps the FUSE connection alive: end it first.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of `r`, read on a thread so that waiting on them can have a deadline.
fn reader(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = sync_channel(1024);
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn is_mount_point(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
}

fn errno_of(path: &Path) -> Option<i32> {
    std::fs::metadata(path).err().and_then(|e| e.raw_os_error())
}

#[test]
fn owner_namespace_reads_others_are_refused() {
    let fx = Fixture::new();
    fx.fs
        .add_task(
            "web.1",
            None,
            vec![file("secrets/db_password", 0, 0o400, "hunter2"), file("configs/public", 0, 0o444, "listen: 80")],
        )
        .unwrap();
    let secret = fx.path("web.1/secrets/db_password");
    let public = fx.path("web.1/configs/public");
    let mut owner = NsShell::spawn();
    let mut other = NsShell::spawn();

    // Until an owner is set nobody may read, not even the future owner.
    let (out, rc) = owner.run(&format!("cat {}", secret.display()));
    assert_ne!(rc, 0, "{out}");
    assert!(out.contains("Permission denied"), "{out}");

    fx.fs.set_owner("web.1", owner.owner()).unwrap();
    assert_eq!(owner.run(&format!("cat {}", secret.display())), ("hunter2".to_string(), 0));
    assert_eq!(owner.run(&format!("ls {}", fx.path("web.1").display())), ("configs\nsecrets".to_string(), 0));

    // Host root (this process) is refused, for files and for the task directory.
    let err = std::fs::read(&secret).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let err = std::fs::read(&public).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let err = std::fs::read_dir(fx.path("web.1")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    // ...but can list the root and see names and sizes.
    let names: Vec<_> = std::fs::read_dir(fx.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["web.1"]);
    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!((meta.len(), meta.uid()), (7, 0));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o400);

    // Another namespace is refused.
    let (out, rc) = other.run(&format!("cat {}", secret.display()));
    assert_ne!(rc, 0);
    assert!(out.contains("Permission denied"), "{out}");

    // Writes are refused even to the owner (read-only mount).
    let (out, rc) = owner.run(&format!("echo x >> {}", secret.display()));
    assert_ne!(rc, 0);
    assert!(out.contains("Read-only file system"), "{out}");

    // In the owner namespace, the kernel still checks uid/gid/mode (default_permissions):
    // nobody cannot read root's 0400 file, and that refusal never reaches us.
    fx.drain();
    let nobody = "setpriv --reuid 65534 --regid 65534 --clear-groups";
    let (out, rc) = owner.run(&format!("{nobody} cat {}", secret.display()));
    assert_ne!(rc, 0);
    assert!(out.contains("Permission denied"), "{out}");
    assert!(fx.drain().is_empty(), "the kernel refused before open reached us");
    assert_eq!(owner.run(&format!("{nobody} cat {}", public.display())), ("listen: 80".to_string(), 0));
}

#[test]
fn rotation_is_seen_immediately() {
    let fx = Fixture::new();
    let mut owner = NsShell::spawn();
    fx.fs.add_task("api.1", Some(owner.owner()), vec![file("token", 0, 0o400, "v1")]).unwrap();
    let token = fx.path("api.1/token");
    let show = format!("cat {0}; echo; stat -c %s {0}", token.display());
    assert_eq!(owner.run(&show), ("v1\n2".to_string(), 0));

    // Longer, then shorter: neither stale bytes nor a stale (cached) size may show.
    fx.fs.update_content("api.1", "token", plaintext("version-two"), 2).unwrap();
    assert_eq!(owner.run(&show), ("version-two\n11".to_string(), 0));
    fx.fs.update_content("api.1", "token", plaintext("3"), 3).unwrap();
    assert_eq!(owner.run(&show), ("3\n1".to_string(), 0));
    let versions: Vec<u64> =
        fx.drain().iter().filter(|e| e.op == AccessOp::Open).map(|e| e.meta.as_ref().unwrap().version).collect();
    assert_eq!(versions, [1, 2, 3]);
}

#[test]
fn remove_task_and_unmount() {
    let mut fx = Fixture::new();
    let mut owner = NsShell::spawn();
    fx.fs.add_task("gone.1", Some(owner.owner()), vec![file("a/b", 0, 0o444, "gone-secret")]).unwrap();
    fx.fs.add_task("stays.1", Some(owner.owner()), vec![file("c", 0, 0o444, "y")]).unwrap();
    let b = fx.path("gone.1/a/b");
    assert_eq!(owner.run(&format!("cat {}", b.display())), ("gone-secret".into(), 0));
    // Keep the file open in the task across the removal.
    owner.run(&format!("exec 7< {}", b.display()));
    assert!(std::fs::metadata(&b).is_ok());

    fx.fs.remove_task("gone.1").unwrap();
    assert_eq!(errno_of(&fx.path("gone.1")), Some(libc::ENOENT));
    assert_eq!(errno_of(&b), Some(libc::ENOENT));
    let (out, rc) = owner.run(&format!("cat {}", b.display()));
    assert_ne!(rc, 0, "{out}");
    let (out, rc) = owner.run("cat <&7");
    // fstat fails first (ENOENT); a read would get EIO: either way, no content.
    assert_ne!(rc, 0, "an open file stops serving a removed task: {out}");
    assert!(!out.contains("gone-secret"), "{out}");
    let names: Vec<_> = std::fs::read_dir(fx.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["stays.1"]);

    // Unmount: the path is no longer a mount point here.
    drop(owner);
    let root = fx.root().to_path_buf();
    assert!(is_mount_point(&root));
    fx.guard.take().unwrap().unmount().unwrap();
    assert!(!is_mount_point(&root));
    assert!(std::fs::read_dir(&root).unwrap().next().is_none());
}

#[test]
fn guard_drop_unmounts_even_when_busy() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(SecretFs::new());
    fs.add_task("t", None, vec![]).unwrap();
    let guard = mount(fs, dir.path()).unwrap();
    assert!(is_mount_point(dir.path()));
    // A process with its working directory inside makes a plain umount fail with EBUSY.
    let mut busy = Command::new("sleep").arg("60").current_dir(dir.path()).spawn().unwrap();
    drop(guard);
    assert!(!is_mount_point(dir.path()));
    busy.kill().unwrap();
    busy.wait().unwrap();
}

/// Not a test on its own: the child process of `stale_mount_is_cleaned`, which mounts and
/// waits to be killed.
#[test]
#[ignore = "helper process of stale_mount_is_cleaned"]
fn stale_mount_child() {
    let Ok(path) = std::env::var("HUSH_TEST_STALE_MOUNT") else {
        return;
    };
    let fs = Arc::new(SecretFs::new());
    let _guard = mount(fs, Path::new(&path)).expect("child mount");
    println!("MOUNTED");
    loop {
        std::thread::park();
    }
}

#[test]
fn stale_mount_is_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["stale_mount_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("HUSH_TEST_STALE_MOUNT", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = reader(child.stdout.take().unwrap());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.contains("MOUNTED") => break,
            Ok(_) => {}
            Err(_) => panic!("child did not mount"),
        }
    }
    assert!(is_mount_point(dir.path()));
    assert!(!clean_stale_mount(Path::new("/nonexistent/hush")).unwrap());

    // A crashed agent: SIGKILL, reaped by us (PID 1 here does not reap).
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(errno_of(dir.path()), Some(libc::ENOTCONN));
    let err = mount(Arc::new(SecretFs::new()), dir.path()).unwrap_err();
    assert!(err.to_string().contains("not connected"), "{err}");

    assert!(clean_stale_mount(dir.path()).unwrap());
    assert!(!is_mount_point(dir.path()));
    assert_eq!(errno_of(dir.path()), None);
    assert!(!clean_stale_mount(dir.path()).unwrap(), "nothing left to clean");

    let fs = Arc::new(SecretFs::new());
    fs.add_task("again", None, vec![]).unwrap();
    let guard = mount(fs, dir.path()).unwrap();
    assert!(dir.path().join("again").is_dir());
    // A live hush mount left at the path (a previous agent still running) is detached too.
    assert!(clean_stale_mount(dir.path()).unwrap());
    assert!(!is_mount_point(dir.path()));
    drop(guard);
}

#[test]
fn events_name_the_process() {
    let fx = Fixture::new();
    let mut owner = NsShell::spawn();
    fx.fs.add_task("db.1", Some(owner.owner()), vec![file("secrets/pw", 0, 0o400, "0123456789")]).unwrap();
    let pw = fx.path("db.1/secrets/pw");
    let (out, rc) = owner.run(&format!("sh -c 'echo pid=$$; exec cat {}'", pw.display()));
    assert_eq!(rc, 0, "{out}");
    let (pid_line, content) = out.split_once('\n').unwrap();
    assert_eq!(content, "0123456789");
    let cat_pid: u32 = pid_line.strip_prefix("pid=").unwrap().parse().unwrap();

    let evs = fx.drain();
    let summary: Vec<_> = evs.iter().map(|e| (e.op, e.pid, e.uid, e.gid, &*e.command, e.bytes)).collect();
    assert_eq!(summary, [(AccessOp::Open, cat_pid, 0, 0, "cat", 0), (AccessOp::Read, cat_pid, 0, 0, "cat", 10),]);
    assert_eq!((&*evs[0].task_id, &*evs[0].path), ("db.1", "secrets/pw"));
    assert_eq!(&*evs[0].meta.as_ref().unwrap().name, "pw");

    // Refused from a thread of this process: the event names the process, not the thread.
    let pw2 = pw.clone();
    let err = std::thread::spawn(move || std::fs::File::open(pw2).unwrap_err()).join().unwrap();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let evs = fx.drain();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].op, AccessOp::Denied(DenyReason::NotOwner));
    assert_eq!(evs[0].pid, std::process::id());
    assert_eq!(fx.fs.dropped_events(), 0);
}

#[test]
fn own_namespace_as_owner_from_threads() {
    // The agent's (and the benchmark's) setup: this process owns a task.
    let fx = Fixture::new();
    let me = std::process::id();
    fx.fs
        .add_task(
            "self.1",
            Some(TaskOwner::new(MountNamespaceOwner::of_process(me).unwrap())),
            vec![file("k", 0, 0o400, "abc")],
        )
        .unwrap();
    let k = fx.path("self.1/k");
    let got = std::thread::spawn(move || std::fs::read(k).unwrap()).join().unwrap();
    assert_eq!(got, b"abc");
    let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
    let evs = fx.drain();
    assert!(evs.len() >= 2, "{evs:?}");
    for e in &evs {
        assert_eq!((e.pid, &*e.command), (me, comm.trim_end()));
    }
    assert_eq!(evs[1].bytes, 3);
}

/// A new mount namespace made by `unshare -m`, which prints its inode number and then tries to
/// read `file`: (inode, cat's output, cat's exit status).
fn fresh_namespace_reads(file: &Path) -> (u64, String, i32) {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "unchanged", "sh", "-c"])
        .arg(r#"readlink /proc/self/ns/mnt; cat "$1" 2>&1"#)
        .arg("sh")
        .arg(file)
        .output()
        .expect("unshare");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (link, rest) = text.split_once('\n').expect("namespace link");
    let ino = link.trim_start_matches("mnt:[").trim_end_matches(']').parse().expect("inode");
    (ino, rest.trim_end().to_string(), out.status.code().unwrap_or(-1))
}

#[test]
fn reused_namespace_number_is_refused() {
    // The kernel gives a freed namespace's inode number to the next namespace at once.
    let reused = (0..10).any(|_| fresh_namespace_reads(Path::new("/")).0 == fresh_namespace_reads(Path::new("/")).0);
    assert!(reused, "this kernel reuses mount namespace numbers: the attack below is real");

    let fx = Fixture::new();
    let mut task = NsShell::spawn();
    let number = task.mnt_ns();
    fx.fs.add_task("leak.1", Some(task.owner()), vec![file("s", 0, 0o400, "leaked-secret")]).unwrap();
    let secret = fx.path("leak.1/s");
    assert_eq!(task.run(&format!("cat {}", secret.display())), ("leaked-secret".to_string(), 0));
    // The task's last process is gone, but its directory is still served (a leaked task).
    drop(task);

    // Namespaces made now cannot get the task's number (the owner holds the namespace), so
    // none of them is taken for the owner.
    for _ in 0..10 {
        let (ino, out, rc) = fresh_namespace_reads(&secret);
        assert_ne!(ino, number, "a new namespace got the number of one still held");
        assert_ne!(rc, 0, "{out}");
        assert!(out.contains("Permission denied") && !out.contains("leaked-secret"), "{out}");
    }
    let denied = fx.drain().iter().filter(|e| e.op == AccessOp::Denied(DenyReason::NotOwner)).count();
    assert_eq!(denied, 10);

    // Once the task is removed, its owner lets go of the namespace. This process serves the
    // filesystem, so its fd table shows it; waiting for the kernel to hand the number out again
    // would race every other test making namespaces at the same time.
    assert!(holds_mnt_ns(number), "the owner holds the task's namespace while the task is served");
    fx.fs.remove_task("leak.1").unwrap();
    assert!(!holds_mnt_ns(number), "the namespace was released with its task");
}

/// Whether this process has an fd open on the mount namespace with inode `number`.
fn holds_mnt_ns(number: u64) -> bool {
    let wanted = format!("mnt:[{number}]");
    std::fs::read_dir("/proc/self/fd")
        .expect("fd table")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| target.as_os_str() == wanted.as_str())
}

/// Content of version `v` of the rotated file: its own number throughout, and a length that
/// changes from one version to the next (a stale size would cut or pad it).
fn version_content(v: u64) -> String {
    format!("v{v:08};").repeat(10 + (v % 7) as usize * 40)
}

/// The version a whole read returned, checking every byte belongs to that one version.
fn version_of(bytes: &[u8]) -> u64 {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    let v: u64 = text.get(1..9).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("garbled: {text:?}"));
    assert_eq!(text, version_content(v), "one version, whole");
    v
}

/// Reads `path` whole with `sendfile` (what `busybox cat` does) into a tmpfs file.
fn sendfile_whole(path: &Path, sink: &std::fs::File) -> Vec<u8> {
    let file = std::fs::File::open(path).expect("open");
    let mut offset = 0u64;
    rustix::fs::ftruncate(sink, 0).unwrap();
    rustix::fs::seek(sink, rustix::fs::SeekFrom::Start(0)).unwrap();
    loop {
        let n = rustix::fs::sendfile(sink, &file, Some(&mut offset), 1 << 20).expect("sendfile");
        if n == 0 {
            break;
        }
    }
    let mut out = vec![0u8; offset as usize];
    rustix::io::pread(sink, &mut out, 0).unwrap();
    out
}

#[test]
fn rotation_under_busy_readers_never_serves_a_stale_version() {
    // Readers are threads of this process, which owns the task (its own namespace).
    let fx = Fixture::new();
    let owner = TaskOwner::new(MountNamespaceOwner::of_process(std::process::id()).unwrap());
    let mut spec = file("secrets/s", 0, 0o400, "");
    spec.content = plaintext(&version_content(1));
    let other = file("secrets/other", 0, 0o400, "unchanged");
    fx.fs.add_task("rot.1", Some(owner), vec![spec.clone(), other.clone()]).unwrap();
    let path = fx.path("rot.1/secrets/s");
    // Opened before the rotations and not read yet: it must still read version 1 after them.
    let mut early = std::fs::File::open(&path).unwrap();

    const ROTATIONS: u64 = 2_000;
    let published = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = [false, true]
        .into_iter()
        .map(|use_sendfile| {
            let (path, published, done) = (path.clone(), published.clone(), done.clone());
            std::thread::spawn(move || {
                let sink = tempfile::tempfile_in("/dev/shm").unwrap();
                let (mut reads, mut saw_new) = (0u64, 0u64);
                let mut last = 0;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    // The version whose rotation had returned before this open started.
                    let floor = published.load(std::sync::atomic::Ordering::Acquire);
                    let bytes = if use_sendfile { sendfile_whole(&path, &sink) } else { std::fs::read(&path).unwrap() };
                    let v = version_of(&bytes);
                    assert!(v >= floor, "stale: read version {v} after version {floor} was in place");
                    saw_new += u64::from(v > last);
                    last = v;
                    reads += 1;
                }
                (reads, saw_new)
            })
        })
        .collect();
    for v in 2..=ROTATIONS {
        if v % 3 == 0 {
            // A service update changing the file (and keeping another): the same guarantee.
            let mut changed = spec.clone();
            changed.content = plaintext(&version_content(v));
            changed.meta.version = v;
            fx.fs.set_files("rot.1", vec![changed, other.clone()]).unwrap();
        } else {
            fx.fs.update_content("rot.1", "secrets/s", plaintext(&version_content(v)), v).unwrap();
        }
        published.store(v, std::sync::atomic::Ordering::Release);
        if v % 4 == 0 {
            // Let the readers in between some rotations.
            std::thread::yield_now();
        }
    }
    // A last stretch of reads with the final version in place.
    std::thread::sleep(Duration::from_millis(50));
    done.store(true, std::sync::atomic::Ordering::Release);
    for (kind, r) in ["read", "sendfile"].iter().zip(readers) {
        let (reads, versions) = r.join().expect("reader");
        assert!(reads > 100 && versions > 10, "{kind}: {reads} reads saw {versions} versions");
    }
    // Both kinds of reader see the last version; the early descriptor its own.
    assert_eq!(version_of(&std::fs::read(&path).unwrap()), ROTATIONS);
    let sink = tempfile::tempfile_in("/dev/shm").unwrap();
    assert_eq!(version_of(&sendfile_whole(&path, &sink)), ROTATIONS);
    let mut old = Vec::new();
    early.read_to_end(&mut old).unwrap();
    assert_eq!(version_of(&old), 1, "a descriptor opened before a rotation keeps its version");
    assert_eq!(early.metadata().unwrap().len(), version_content(1).len() as u64);
    assert_eq!(std::fs::read_to_string(fx.path("rot.1/secrets/other")).unwrap(), "unchanged");
}
