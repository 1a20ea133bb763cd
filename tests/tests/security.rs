//! Security properties end to end: mutual TLS refusals, autolock, no plaintext at rest or in
//! logs, tamper detection, refusal of an uninitialised data dir, and the agent's control socket
//! identifying its caller by a pidfd (a reused pid gets nothing).

use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use hush_tests::{Run, TestVault, files_containing, marker, wait_for};
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

/// Processes made with `clone3` for the pid-reuse attack on the agent's control socket. The
/// children run only raw system calls (the test process has other threads: no allocation or lock
/// after the clone).
#[allow(unsafe_code)]
mod pid_reuse {
    use std::os::fd::RawFd;

    /// `struct clone_args` (`linux/sched.h`, version 2 with `set_tid`).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
    }

    /// What a child does, then it waits to be killed (or exits at once).
    pub struct Child {
        /// In a mount namespace of its own (as `hush run` tasks are).
        pub new_mount_ns: bool,
        /// `connect()` this socket (shared with the parent) to this address first.
        pub connect: Option<(RawFd, libc::sockaddr_un)>,
        /// Exit right away instead of waiting to be killed.
        pub exit: bool,
        /// Take exactly this pid (`set_tid`; needs CAP_SYS_ADMIN), or fail with `EEXIST`.
        pub pid: Option<i32>,
        /// Become this uid (and gid) before connecting.
        pub uid: Option<u32>,
    }

    /// Starts the child; its pid.
    pub fn spawn(child: &Child) -> std::io::Result<i32> {
        let tid = child.pid.unwrap_or(0);
        let mut args = CloneArgs {
            flags: if child.new_mount_ns { libc::CLONE_NEWNS as u64 } else { 0 },
            exit_signal: libc::SIGCHLD as u64,
            ..Default::default()
        };
        if child.pid.is_some() {
            args.set_tid = (&raw const tid) as u64;
            args.set_tid_size = 1;
        }
        // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of this address space
        // and runs only async-signal-safe system calls below, then `_exit`s or pauses forever.
        let pid = unsafe { libc::syscall(libc::SYS_clone3, &raw mut args, std::mem::size_of::<CloneArgs>()) };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid > 0 {
            return Ok(pid as i32);
        }
        // The child.
        if let Some(uid) = child.uid {
            // SAFETY: plain system calls; the child exits if they fail.
            unsafe {
                if libc::setresgid(uid, uid, uid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
                    libc::_exit(3);
                }
            }
        }
        if let Some((fd, addr)) = &child.connect {
            // SAFETY: `addr` is a valid sockaddr_un of the length given; `fd` is a socket.
            let rc = unsafe {
                libc::connect(
                    *fd,
                    (addr as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                // SAFETY: ends the child without running anything of the parent's.
                unsafe { libc::_exit(2) };
            }
        }
        if child.exit {
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        loop {
            // SAFETY: waits for the SIGKILL the parent sends.
            unsafe { libc::pause() };
        }
    }

    /// Kills and reaps a paused child when dropped (also when the test fails).
    pub struct Killed(pub i32);

    impl Drop for Killed {
        fn drop(&mut self) {
            reap(self.0, true);
        }
    }

    /// Reaps `pid` (after killing it, if `kill`); its wait status.
    pub fn reap(pid: i32, kill: bool) -> i32 {
        let mut status = 0;
        // SAFETY: plain system calls on our own child.
        unsafe {
            if kill {
                libc::kill(pid, libc::SIGKILL);
            }
            libc::waitpid(pid, &raw mut status, 0);
        }
        status
    }

    /// An unconnected Unix stream socket.
    pub fn unix_socket() -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd;
        // SAFETY: a plain system call; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: see above.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    }

    pub fn unix_addr(path: &std::path::Path) -> libc::sockaddr_un {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: all-zero is a valid sockaddr_un.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        addr
    }
}

/// `RunTask` for service `web` over a socket some other process connected (so the agent's peer
/// is that process, as the kernel recorded it at `connect()`): the first event, or the refusal.
/// The connection is closed on return (its runtime is dropped), which ends a task it started.
fn run_task_over(socket: std::os::unix::net::UnixStream) -> Result<Option<pb::RunTaskEvent>, tonic::Status> {
    socket.set_nonblocking(true).expect("non-blocking");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let once = std::sync::Mutex::new(Some(tokio::net::UnixStream::from_std(socket).expect("tokio socket")));
        let channel = Endpoint::from_static("http://agent.invalid")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let stream = once.lock().expect("not poisoned").take();
                async move {
                    stream
                        .map(hyper_util::rt::TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("the pre-connected socket was used already"))
                }
            }))
            .await
            .expect("channel over the connected socket");
        let mut client = hush_proto::v1::agent_control_client::AgentControlClient::new(channel);
        let request = pb::RunTaskRequest { service: "web".into(), name: String::new() };
        client.run_task(request).await?.into_inner().message().await
    })
}

/// The pid-reuse race on the agent's control socket, tried for real: process A connects and
/// exits, A's pid is given to process C in another mount namespace, and the call then goes on
/// over A's connection. An agent that trusted the pid would read `/proc/PID/ns/mnt` and make C's
/// namespace the task's owner; it must refuse the call instead. The same plumbing with a
/// connecting process that stays alive is served (so the refusal is about the exit, nothing else).
#[test]
fn a_task_is_never_given_to_a_process_that_took_the_callers_pid() {
    use hush_tests::TestAgent;
    use std::os::fd::AsRawFd;
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    let value = marker("pidfd");
    vault.hush_stdin(&["secret", "create", "s", "-"], value.as_bytes()).ok();
    vault.hush(&["service", "create", "web", "--secret", "s"]).ok();
    let addr = pid_reuse::unix_addr(&agent.socket());
    let mount_ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("ns link");

    // Control: a connecting process that lives, in its own mount namespace, is given the task.
    let socket = pid_reuse::unix_socket();
    let connect = Some((socket.as_raw_fd(), addr));
    let live = pid_reuse::Killed(
        pid_reuse::spawn(&pid_reuse::Child { new_mount_ns: true, connect, exit: false, pid: None, uid: None })
            .expect("clone3"),
    );
    let socket = std::os::unix::net::UnixStream::from(socket);
    wait_for("the live child to connect", || socket.peer_addr().ok());
    let served = run_task_over(socket);
    drop(live);
    let ready = served.expect("a live caller is served").expect("an event").ready.expect("the task is ready");
    assert!(!ready.task_id.is_empty());
    wait_for("the control's task to end", || agent.task_dirs().is_empty().then_some(()));

    // The attack. Another process may take A's pid first (EEXIST): try again with a new A.
    for attempt in 0.. {
        let socket = pid_reuse::unix_socket();
        let connect = Some((socket.as_raw_fd(), addr));
        let a = pid_reuse::spawn(&pid_reuse::Child { new_mount_ns: true, connect, exit: true, pid: None, uid: None })
            .expect("clone3");
        assert_eq!(pid_reuse::reap(a, false), 0, "A could not connect");
        let c = match pid_reuse::spawn(&pid_reuse::Child {
            new_mount_ns: true,
            connect: None,
            exit: false,
            pid: Some(a),
            uid: None,
        }) {
            Ok(c) => c,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && attempt < 20 => continue,
            Err(e) => panic!("cannot give A's pid {a} to a new process: {e}"),
        };
        let _impostor = pid_reuse::Killed(c);
        // C holds A's pid, in a namespace that is neither the host's nor anyone else's.
        assert_eq!(c, a);
        assert_ne!(mount_ns(c), mount_ns(std::process::id() as i32));
        let answer = run_task_over(socket.into());
        let after = agent.task_dirs();
        let status = match answer {
            Err(status) => status,
            Ok(event) => panic!("the task went to the process that took the caller's pid {c}: {event:?}"),
        };
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("the process that connected has exited"), "{status:?}");
        assert_eq!(after, Vec::<std::path::PathBuf>::new(), "a task was registered");
        break;
    }

    // Another user, the socket's and its directory's modes loosened: refused by its uid too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod dir");
    std::fs::set_permissions(agent.socket(), std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
    let socket = pid_reuse::unix_socket();
    let connect = Some((socket.as_raw_fd(), addr));
    let nobody = pid_reuse::Killed(
        pid_reuse::spawn(&pid_reuse::Child { new_mount_ns: true, connect, exit: false, pid: None, uid: Some(65534) })
            .expect("clone3"),
    );
    let socket = std::os::unix::net::UnixStream::from(socket);
    wait_for("uid 65534 to connect", || socket.peer_addr().ok());
    let status = run_task_over(socket).expect_err("uid 65534 was given a task");
    drop(nobody);
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("only root may ask this agent for tasks (caller uid 65534)"), "{status:?}");
    assert!(agent.task_dirs().is_empty());
    assert!(!agent.log_text().contains(&value), "a value in the agent's log");
}
