//! Docker and Podman for tests: makes sure an engine runs (starting `dockerd` on a fresh machine), builds a
//! tiny busybox image once without any registry, turns swarm mode on, and removes test containers on drop.
//!
//! Every step is safe when several test binaries call it at once: they serialise on one file lock, and each
//! step first checks whether another process already did it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Run;

/// How long dockerd may take to answer after we start it (a cold start on 2 cores takes a few seconds).
const ENGINE_DEADLINE: Duration = Duration::from_secs(90);

/// The local tag of the test image (never pushed or pulled; swarm gets the ID instead).
pub const IMAGE_TAG: &str = "hush-test/busybox:1";

/// Flags podman 4.3 needs on this machine kind (its default rlimits are above what the container may set).
pub const PODMAN_ULIMITS: [&str; 4] = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];

/// Holds the cross-process lock while alive.
struct Lock(#[allow(dead_code)] File);

fn lock() -> Lock {
    let path = std::env::temp_dir().join("hush-tests-docker.lock");
    let file = File::options().create(true).truncate(false).write(true).open(&path).expect("lock file");
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    Lock(file)
}

/// `docker ARGS`, to completion.
pub fn docker(args: &[&str]) -> Run {
    Run::from_command(Command::new("docker").args(args))
}

/// `podman ARGS`, to completion.
pub fn podman(args: &[&str]) -> Run {
    Run::from_command(Command::new("podman").args(args))
}

fn engine_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure a Docker engine answers on the default socket, starting
/// `dockerd --bridge=none --iptables=false --ip6tables=false` if none does (its log goes to a temp file,
/// named in the panic message if it never answers). Panics if `docker`/`dockerd` are not installed.
pub fn engine() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if engine_answers() {
            return;
        }
        let _lock = lock();
        if engine_answers() {
            return;
        }
        let log_path = std::env::temp_dir().join(format!("hush-tests-dockerd-{}.log", std::process::id()));
        let log = File::create(&log_path).expect("dockerd log file");
        let mut command = Command::new("dockerd");
        command
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // Its own process group: a test run interrupted with ^C leaves the engine to the next run.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd ({e}): install docker.io (scripts/test.sh does)"));
        let start = Instant::now();
        while !engine_answers() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("dockerd exited with {status}; its log: {}", log_path.display());
            }
            assert!(
                start.elapsed() < ENGINE_DEADLINE,
                "dockerd did not answer within {ENGINE_DEADLINE:?}; its log: {}",
                log_path.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // dockerd outlives this test binary on purpose (the next binary reuses it); never reaped here.
        std::mem::forget(child);
    });
}

/// The busybox applets' rootfs, tarred: `/bin/busybox` (static) and a link per applet, `/etc/passwd`
/// with root and nobody, an empty `/tmp`.
fn rootfs_tar(dir: &Path) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox is missing: install busybox-static (scripts/test.sh does)");
    let root = dir.join("rootfs");
    for sub in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "run"] {
        std::fs::create_dir_all(root.join(sub)).expect("rootfs dir");
    }
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    let list = Run::from_command(Command::new(busybox).arg("--list-full"));
    for applet in list.ok().lines().filter(|l| !l.is_empty() && *l != "bin/busybox") {
        let link = root.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("/bin/busybox", &link).expect("applet link");
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
        .expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    let tar = dir.join("rootfs.tar");
    let run = Run::from_command(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("."));
    run.ok();
    tar
}

fn image_id(tool: &str) -> Option<String> {
    let run = Run::from_command(Command::new(tool).args(["image", "inspect", "--format", "{{.Id}}", IMAGE_TAG]));
    run.status.success().then(|| run.stdout.trim().to_string()).filter(|id| !id.is_empty())
}

fn build_image(tool: &str) -> String {
    if let Some(id) = image_id(tool) {
        return id;
    }
    let _lock = lock();
    if let Some(id) = image_id(tool) {
        return id;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let tar = rootfs_tar(dir.path());
    let run = Run::from_command(Command::new(tool).arg("import").arg(&tar).arg(IMAGE_TAG));
    run.ok();
    image_id(tool).expect("imported image has an ID")
}

/// The ID (`sha256:...`) of the test image in Docker, imported once from a busybox-static rootfs.
/// Swarm services must name it by this ID (a tag makes swarm try a registry).
pub fn image() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        engine();
        build_image("docker")
    })
    .clone()
}

/// The ID of the same image in Podman's own store (podman does not see Docker's images).
pub fn podman_image() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| build_image("podman")).clone()
}

fn swarm_state() -> String {
    docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout.trim().to_string()
}

/// Makes sure the engine is a swarm manager (`docker swarm init --advertise-addr 127.0.0.1` if it is not;
/// an already active swarm is kept as it is).
pub fn swarm() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        engine();
        if swarm_state() == "active" {
            return;
        }
        let _lock = lock();
        if swarm_state() == "inactive" {
            let run = docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
            assert!(
                run.status.success() || run.stderr.contains("already part of a swarm"),
                "docker swarm init failed: {}",
                run.stderr
            );
        }
        let start = Instant::now();
        while swarm_state() != "active" {
            assert!(start.elapsed() < ENGINE_DEADLINE, "swarm did not become active: {}", swarm_state());
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

/// Which engine a [`Container`] lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    pub fn program(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// A container started by a test, removed (`rm -f`) on drop.
#[derive(Debug)]
pub struct Container {
    pub engine: Engine,
    pub id: String,
}

impl Container {
    /// `ENGINE run -d ARGS` (add the image and command to `args`); panics with the engine's error if it fails.
    /// Podman gets [`PODMAN_ULIMITS`] added.
    pub fn run_detached(engine: Engine, args: &[&str]) -> Self {
        let mut command = Command::new(engine.program());
        command.args(["run", "-d"]);
        if engine == Engine::Podman {
            command.args(PODMAN_ULIMITS);
        }
        let run = Run::from_command(command.args(args));
        let id = run.ok().trim().to_string();
        Self { engine, id }
    }

    /// Adopts a container started some other way (e.g. by `hush docker run -d`).
    pub fn adopt(engine: Engine, id: &str) -> Self {
        Self { engine, id: id.trim().to_string() }
    }

    /// `ENGINE exec CONTAINER ARGS`.
    pub fn exec(&self, args: &[&str]) -> Run {
        Run::from_command(Command::new(self.engine.program()).arg("exec").arg(&self.id).args(args))
    }

    /// The host pid of the container's init process.
    pub fn pid(&self) -> u32 {
        let run = Run::from_command(Command::new(self.engine.program()).args([
            "inspect",
            "--format",
            "{{.State.Pid}}",
            &self.id,
        ]));
        run.ok().trim().parse().expect("a pid")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(self.engine.program())
            .args(["rm", "-f", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes a swarm service on drop.
#[derive(Debug)]
pub struct SwarmService(pub String);

impl Drop for SwarmService {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["service", "rm", &self.0])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Podman's API service on a socket of our own, for as long as the test runs.
pub struct PodmanService {
    child: std::process::Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl PodmanService {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("podman.sock");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service starts");
        crate::wait_for("the podman socket", || socket.exists().then_some(()));
        Self { child, socket, _dir: dir }
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
