//! Test harness: builds the real binaries, starts vaults on loopback ports chosen by the
//! kernel, runs the `hush` CLI against them, and cleans up on drop.

pub mod docker;
pub mod etcd;
pub mod loops;
pub mod node_client;
pub mod proxy;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long anything in a test may take to become ready.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The workspace's `target/<profile>` directory (tests run from `target/<profile>/deps`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps").to_path_buf()
}

/// Path of a workspace binary. `cargo test --workspace` builds them (the `hush-vault` and
/// `hush-agent` packages have integration tests, which makes cargo build their binaries with
/// the same features as this run; building them from here would flip features and rebuild).
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(path.exists(), "{} is missing: run the suite with `cargo test --workspace`", path.display());
    path
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Self {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs `command` to completion with no stdin.
    pub fn from_command(command: &mut Command) -> Self {
        Self::from(command.stdin(Stdio::null()).output().expect("command runs"))
    }

    /// Asserts success; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "command failed: {self:?}");
        &self.stdout
    }

    /// Asserts the CLI failure shape: non-zero exit, exactly one stderr line `error: ...`
    /// containing `needle`. Returns that line.
    #[track_caller]
    pub fn fails_with(&self, needle: &str) -> String {
        assert!(!self.status.success(), "command should have failed: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one error line, got: {:?}", self.stderr);
        assert!(lines[0].starts_with("error: "), "error line: {:?}", lines[0]);
        assert!(lines[0].contains(needle), "{:?} does not contain {needle:?}", lines[0]);
        lines[0].to_string()
    }
}

/// A data directory initialised with `hush vault init`, and the vault process serving it.
pub struct TestVault {
    pub temp: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub addr: String,
    pub log: PathBuf,
    child: Option<Child>,
    pub init_stdout: String,
    /// The admin bundle: `DATA_DIR/admin`, or beside the data dir when autolocked (init refuses
    /// an autolocked vault's bundle inside its data dir).
    admin_dir: PathBuf,
    /// Extra environment for the vault process (e.g. a small audit file size).
    pub env: Vec<(String, String)>,
    /// Extra `vault serve` flags (e.g. `--store etcd://...`).
    pub serve_args: Vec<String>,
}

impl TestVault {
    /// Initialises a data dir (extra `init` flags in `init_args`) without starting it.
    pub fn init(init_args: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let autolock = init_args.contains(&"--autolock");
        let admin_dir = if autolock { temp.path().join("admin") } else { data_dir.join("admin") };
        let mut args = vec!["vault", "init", "--data-dir", data_dir.to_str().expect("utf-8 path")];
        if autolock {
            args.extend(["--admin-dir", admin_dir.to_str().expect("utf-8 path")]);
        }
        args.extend_from_slice(init_args);
        let init = Run::from(Command::new(bin("hush")).args(&args).output().expect("hush runs"));
        let init_stdout = init.ok().to_string();
        let log = temp.path().join("vault.log");
        Self {
            temp,
            data_dir,
            addr: String::new(),
            log,
            child: None,
            init_stdout,
            admin_dir,
            env: Vec::new(),
            serve_args: Vec::new(),
        }
    }

    /// Another replica of a vault whose store is shared (etcd): a new data dir holding only a
    /// copy of `first`'s key-encryption key file (none when autolocked), the same admin bundle
    /// and serve flags. Not started.
    pub fn replica_of(first: &TestVault) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        std::fs::create_dir(&data_dir).expect("data dir");
        for entry in std::fs::read_dir(&first.data_dir).expect("first data dir") {
            let entry = entry.expect("entry");
            if entry.file_name().to_string_lossy().starts_with("kek-") {
                std::fs::copy(entry.path(), data_dir.join(entry.file_name())).expect("copy the key file");
            }
        }
        let log = temp.path().join("vault.log");
        Self {
            temp,
            data_dir,
            addr: String::new(),
            log,
            child: None,
            init_stdout: String::new(),
            admin_dir: first.admin_dir.clone(),
            env: first.env.clone(),
            serve_args: first.serve_args.clone(),
        }
    }

    /// `count` replicas serving one shared store `url` (etcd), each with `serve_args` after
    /// `--store URL`: the first initialised on it, the others [`TestVault::replica_of`] it.
    pub fn replicas_on(url: &str, count: usize, serve_args: &[&str]) -> Vec<Self> {
        let mut first = Self::init(&["--store", url]);
        first.serve_args = ["--store", url].iter().chain(serve_args).map(|a| a.to_string()).collect();
        first.start();
        let mut all = vec![first];
        for _ in 1..count {
            let mut replica = Self::replica_of(&all[0]);
            replica.start();
            all.push(replica);
        }
        all
    }

    /// Initialised and serving.
    pub fn start_new() -> Self {
        let mut vault = Self::init(&[]);
        vault.start();
        vault
    }

    pub fn admin_dir(&self) -> PathBuf {
        self.admin_dir.clone()
    }

    /// Starts `hush vault serve` on a free loopback port; returns once it listens.
    /// Its stderr (the log) is appended to `self.log`.
    pub fn start(&mut self) {
        self.start_on("127.0.0.1:0");
    }

    /// Starts on a given address (to come back on the same port after a crash).
    pub fn start_on(&mut self, listen: &str) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut child = Command::new(bin("hush"))
            .args(["vault", "serve", "--listen", listen, "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.serve_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("vault starts");
        let stdout = child.stdout.take().expect("piped stdout");
        self.addr = read_line_with(stdout, "hush vault listening on ").unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vault did not start: {}", std::fs::read_to_string(&self.log).unwrap_or_default())
        });
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        child.wait().expect("vault exits")
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(bin("hush"));
        command.env("HUSH_VAULT", &self.addr).env("HUSH_TLS_DIR", self.admin_dir()).env_remove("HUSH_LOG");
        command
    }

    /// Runs `hush ARGS` against this vault.
    pub fn hush(&self, args: &[&str]) -> Run {
        Run::from(self.command().args(args).stdin(Stdio::null()).output().expect("hush runs"))
    }

    /// Runs `hush ARGS` with `input` on stdin.
    pub fn hush_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hush runs");
        child.stdin.take().expect("piped").write_all(input).expect("write stdin");
        Run::from(child.wait_with_output().expect("hush exits"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestVault {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads lines until one starts with `prefix`; returns the rest of it. Gives up at EOF or
/// after [`DEADLINE`] (the reader runs on its own thread so a silent child cannot hang us).
pub fn read_line_with(stream: impl std::io::Read + Send + 'static, prefix: &str) -> Option<String> {
    let prefix = prefix.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stream).lines();
        let found = lines.by_ref().map_while(Result::ok).find_map(|l| l.strip_prefix(&prefix).map(str::to_string));
        let _ = tx.send(found);
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    rx.recv_timeout(DEADLINE).ok().flatten()
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("readable dir") {
                stack.push(entry.expect("dir entry").path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(path);
        }
    }
    hits
}

/// A value unlikely to appear anywhere by chance.
pub fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    format!("PLAINTEXT-{tag}-{nanos:x}-{}", std::process::id())
}

/// Polls `check` until it returns `Some` or [`DEADLINE`] passes.
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `hush-agent` joined to a [`TestVault`], with its own state dir, mount root and socket.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    child: Option<Child>,
    /// Extra environment for the agent process.
    pub env: Vec<(String, String)>,
}

impl TestAgent {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn mount_root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    /// The task directories the agent's FUSE mount shows (`services/` holds the service
    /// directories containers bind, not tasks).
    pub fn task_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.mount_root())
            .map(|dir| dir.flatten().filter(|e| e.file_name() != "services").map(|e| e.path()).collect())
            .unwrap_or_default()
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Joins `vault` with a new token and waits until the agent serves.
    pub fn join(vault: &TestVault) -> Self {
        Self::join_with(vault, &[])
    }

    /// [`TestAgent::join`] with extra agent arguments (e.g. `--podman-socket`).
    pub fn join_with(vault: &TestVault, extra: &[&str]) -> Self {
        Self::join_any_with(vault, &vault.addr, extra)
    }

    /// Joins with `vault`'s token, giving the agent `vaults` (several replicas: `a,b,c`).
    pub fn join_any(vault: &TestVault, vaults: &str) -> Self {
        Self::join_any_with(vault, vaults, &[])
    }

    fn join_any_with(vault: &TestVault, vaults: &str, extra: &[&str]) -> Self {
        let token = vault.hush(&["node", "join-token", "-q"]).ok().trim().to_string();
        let mut agent = Self::new();
        let file = agent.token_file(&token);
        let mut args = vec!["--vault", vaults, "--join-token-file", file.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        agent.start(&args).expect("agent starts");
        agent
    }

    /// An agent that has not started (nor joined) yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("agent.log");
        Self { dir, log, child: None, env: Vec::new() }
    }

    /// Writes `token` to a file only its owner can read, for `--join-token-file`.
    pub fn token_file(&self, token: &str) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.path().join("join-token");
        let _ = std::fs::remove_file(&path);
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).expect("token file");
        file.write_all(token.as_bytes()).expect("token written");
        path
    }

    /// Starts the agent to join `vault` with `token` (from a file, never on the command line).
    pub fn start_joining(&mut self, vault: &TestVault, token: &str) -> Result<(), Run> {
        let file = self.token_file(token);
        self.start(&["--vault", &vault.addr, "--join-token-file", file.to_str().expect("utf-8 path")])
    }

    /// Starts the agent with extra arguments; returns the error output if it exits instead.
    pub fn start(&mut self, extra: &[&str]) -> Result<(), Run> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let mut child = Command::new(bin("hush-agent"))
            .args(extra)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--mount-root")
            .arg(self.mount_root())
            .arg("--socket")
            .arg(self.socket())
            .env_remove("HUSH_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("agent spawns");
        let stdout = child.stdout.take().expect("piped");
        match read_line_with(stdout, "hush-agent: node ") {
            Some(_) => {
                self.child = Some(child);
                Ok(())
            }
            None => {
                let status = child.wait().expect("agent exits");
                let stderr = std::fs::read_to_string(&self.log).unwrap_or_default();
                Err(Run { status, stdout: String::new(), stderr })
            }
        }
    }

    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        child.wait().expect("agent exits")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, then reap: the agent gets no chance to clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts a second agent with the same state dir (a graceful restart: it takes over from the
    /// running one), then waits for the running one to exit. Returns its exit status and how
    /// long it took from the start of the new agent to the old one's exit.
    pub fn restart(&mut self, extra: &[&str]) -> (ExitStatus, Duration) {
        let mut old = self.child.take().expect("running");
        let began = std::time::Instant::now();
        if let Err(run) = self.start(extra) {
            let _ = old.kill();
            let _ = old.wait();
            panic!("the new agent did not start: {run:?}");
        }
        let status = wait_for("the old agent to exit", || old.try_wait().expect("try_wait"));
        (status, began.elapsed())
    }

    /// Waits for the agent to exit by itself (e.g. after its node was removed).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        wait_for("agent exit", || child.try_wait().expect("try_wait"))
    }

    /// `hush run ARGS` against this agent (through `hush`, as users run it).
    pub fn run(&self, vault: &TestVault, args: &[&str]) -> Run {
        Run::from_command(vault.command().env("HUSH_AGENT_SOCKET", self.socket()).arg("run").args(args))
    }

    /// A task that runs `STEP; echo` once per line it is sent (`hush run --service SERVICE -- sh -c
    /// 'while read x; do STEP; echo; done'`), for watching what a running task sees.
    pub fn session(&self, vault: &TestVault, service: &str, step: &str) -> TaskSession {
        let script = format!("while read x; do {step}; echo; done");
        let mut child = self.spawn_run(vault, &["--service", service, "--", "sh", "-c", &script]);
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        TaskSession { child, stdin, out }
    }

    /// `hush run` in the background with piped stdin/stdout, for tasks that outlive a call.
    pub fn spawn_run(&self, vault: &TestVault, args: &[&str]) -> Child {
        vault
            .command()
            .env("HUSH_AGENT_SOCKET", self.socket())
            .arg("run")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hush run spawns")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Default for TestAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed agent leaves its mount behind; detach it so the temp dir can go.
        let _ = rustix::mount::unmount(self.mount_root(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// A running task driven line by line (see [`TestAgent::session`]).
pub struct TaskSession {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
}

impl TaskSession {
    /// Runs the step once; returns what it printed, trimmed.
    pub fn ask(&mut self) -> String {
        self.stdin.as_mut().expect("session open").write_all(b"\n").expect("task reads its stdin");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("task answers");
        line.trim().to_string()
    }

    /// Ends the loop and waits for the task.
    pub fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.child.wait().expect("task exits")
    }
}

/// A `kB` field of `/proc/PID/status` (`"VmRSS:"`, `"VmHWM:"`, `"VmLck:"`) in KiB; 0 once the
/// process is gone or if the field is missing (a sampler may outlive its process).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}
