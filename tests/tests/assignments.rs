//! Issue 8 item 4 at suite scale: one node is owed 8 services × 2 configs of the largest size
//! (1,023,999 bytes; 16 MB, four times the 4 MiB message limit), with real binaries.
//! - Read raw with the node's own certificate, the stream sends every value once, in messages no
//!   larger than one value, and a task's values first: its snapshot ends before the service
//!   directories' values (before, a task waited for every value the node may ever serve; at
//!   100 × 10 × 1 MB the first task never got its files).
//! - A node holds at most 4 streams (each is what one node can make the vault spend): the 5th
//!   is refused in one line, and a closed one lets the next in.
//! - 8 real `hush run` tasks started at once each read their files whole, and a rotation of one
//!   config per service reaches every task.
//!
//! The full size (100 tasks × 10 × 1 MB) is the `assignments` bench.

use hush_proto::v1 as pb;
use hush_proto::v1::admin_client::AdminClient;
use hush_proto::v1::assignment_part::Part;
use hush_proto::v1::node_client::NodeClient;
use hush_tests::{TestAgent, TestVault, wait_for};
use hush_vault::client::{TlsBundle, connect_channel};

const SERVICES: usize = 8;
const FILES: usize = 2;
const SIZE: usize = 1_023_999;

/// A value of [`SIZE`] bytes whose first 24 name its config and version.
fn value(task: usize, file: usize, version: u32) -> Vec<u8> {
    let mut bytes = format!("{:<16}v{version:<7}", format!("t{task}f{file}")).into_bytes();
    bytes.resize(SIZE, b'a' + ((task * FILES + file + version as usize) % 26) as u8);
    bytes
}

/// What a task prints once it has all its files whole: each file's head, then the total bytes.
fn expected(task: usize, first_version: u32) -> String {
    let heads: String = (0..FILES)
        .map(|file| {
            let version = if file == 0 { first_version } else { 1 };
            String::from_utf8_lossy(&value(task, file, version)[..24]).into_owned()
        })
        .collect();
    format!("{heads} {}", FILES * SIZE)
}

/// The node's certificate as a `TlsBundle` directory.
fn node_bundle(agent: &TestAgent) -> TlsBundle {
    let bundle = agent.dir.path().join("node-bundle-for-assignments");
    std::fs::create_dir_all(&bundle).unwrap();
    for (from, to) in [("ca.pem", "ca.pem"), ("node.pem", "cert.pem"), ("node.key", "key.pem")] {
        std::fs::copy(agent.state_dir().join(from), bundle.join(to)).unwrap();
    }
    TlsBundle::read(&bundle).unwrap()
}

async fn create_configs(client: &AdminClient<tonic::transport::Channel>) {
    let mut writers = Vec::new();
    for task in 0..SERVICES {
        let mut client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut configs = Vec::new();
            for file in 0..FILES {
                let name = format!("t{task}f{file}");
                let data = value(task, file, 1);
                let request = pb::CreateRequest {
                    kind: pb::Kind::Config as i32,
                    name: name.clone(),
                    labels: Default::default(),
                    data,
                };
                client.create(request).await.unwrap();
                configs.push(format!("source={name},target=/c{file}"));
            }
            let request = pb::ServiceCreateRequest { name: format!("svc-{task}"), configs, ..Default::default() };
            client.service_create(request).await.unwrap();
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
}

/// Reads a raw stream for a task of the last service: the task's own values, then an end whose
/// snapshot has the task, before any other value; then every value exactly once.
async fn task_values_come_first(node: &mut NodeClient<tonic::transport::Channel>) {
    let service = format!("svc-{}", SERVICES - 1);
    let request = pb::StartTaskRequest { service: service.clone(), ..Default::default() };
    let task_id = node.start_task(request).await.unwrap().into_inner().task_id;
    let mut stream = node.assignments(pb::AssignmentsRequest::default()).await.unwrap().into_inner();
    let (mut values, mut tasks, mut services) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_end = None;
    loop {
        // The client's 4 MiB decode limit holds: every part is within it.
        let part = stream.message().await.unwrap().expect("the stream stays open");
        match part.part.expect("a part") {
            Part::Value(value) => values.push((value.object_id, value.version)),
            Part::Task(task) => tasks.push(task),
            Part::Service(service) => services.push(service),
            Part::End(_) => {
                let snapshot = (std::mem::take(&mut tasks), std::mem::take(&mut services));
                first_end.get_or_insert_with(|| (values.len(), snapshot.0.clone()));
                let whole = |s: &pb::AssignedService| s.files.len() == FILES;
                if snapshot.1.len() == SERVICES && snapshot.1.iter().all(whole) {
                    break;
                }
            }
        }
    }
    let (values_before, first_tasks) = first_end.expect("an end");
    assert_eq!(values_before, FILES, "the task's values, and only those, before its snapshot ends");
    let task = first_tasks.iter().find(|t| t.task_id == task_id).expect("the first snapshot has the task");
    assert_eq!(task.files.len(), FILES, "{task:?}");
    assert!(task.files.iter().all(|f| values[..FILES].contains(&(f.object_id.clone(), f.version))));
    let distinct: std::collections::HashSet<_> = values.iter().collect();
    assert_eq!((values.len(), distinct.len()), (SERVICES * FILES, SERVICES * FILES), "every value once");
    node.end_task(pb::EndTaskRequest { task_id }).await.unwrap();
}

/// The agent holds one stream; three more are allowed, the next is refused, and once one is
/// closed a new one is let in. The open ones are never read: their senders wait on back-pressure.
async fn streams_per_node_are_capped(node: &mut NodeClient<tonic::transport::Channel>) {
    let mut open = Vec::new();
    // The stream read above may take a moment to be noticed closed: wait until three are held.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while open.len() < 3 {
        match node.assignments(pb::AssignmentsRequest::default()).await {
            Ok(stream) => open.push(stream),
            Err(status) if std::time::Instant::now() < deadline => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(status) => panic!("only {} streams besides the agent's: {status:?}", open.len()),
        }
    }
    let refused = node.assignments(pb::AssignmentsRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert_eq!(refused.message(), "this node already holds 4 assignment streams");
    drop(open.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match node.assignments(pb::AssignmentsRequest::default()).await {
            Ok(stream) => break open.push(stream),
            Err(status) => {
                assert!(std::time::Instant::now() < deadline, "a closed stream did not free its place: {status:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_owed_many_largest_files_gets_them_in_bounded_parts_tasks_first() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let vault = TestVault::start_new();
    let agent = TestAgent::join(&vault);
    let bundle = TlsBundle::read(&vault.admin_dir()).unwrap();
    let client = AdminClient::new(connect_channel(&vault.addr, &bundle).await.unwrap());
    let client = client.max_encoding_message_size(8 << 20);
    create_configs(&client).await;

    let mut node = NodeClient::new(connect_channel(&vault.addr, &node_bundle(&agent)).await.unwrap());
    task_values_come_first(&mut node).await;
    streams_per_node_are_capped(&mut node).await;

    let paths: Vec<String> = (0..FILES).map(|f| format!("/c{f}")).collect();
    let step = format!("for f in {0}; do head -c 24 $f; done; printf ' '; cat {0} | wc -c", paths.join(" "));
    let mut sessions = tokio::task::spawn_blocking(move || {
        let sessions: Vec<_> = (0..SERVICES).map(|task| agent.session(&vault, &format!("svc-{task}"), &step)).collect();
        (agent, vault, sessions)
    })
    .await
    .unwrap();
    let (_, _, tasks) = &mut sessions;
    for (task, session) in tasks.iter_mut().enumerate() {
        assert_eq!(session.ask(), expected(task, 1), "task {task}");
    }

    let mut client = client;
    for task in 0..SERVICES {
        let request = pb::RotateRequest {
            kind: pb::Kind::Config as i32,
            reference: format!("t{task}f0"),
            data: value(task, 0, 2),
            ..Default::default()
        };
        client.rotate(request).await.unwrap();
    }
    for (task, session) in tasks.iter_mut().enumerate() {
        let want = expected(task, 2);
        wait_for("the rotation in every task", || (session.ask() == want).then_some(()));
    }
    let (agent, _vault, tasks) = sessions;
    for session in tasks {
        assert!(session.finish().success());
    }
    assert!(!agent.log_text().contains("decoded message length too large"), "{}", agent.log_text());
}
