//! Real containers (Docker, Podman, Swarm) reading Hush's service directories.

use hush_tests::docker::{self, Container, Engine};

/// The harness itself: an engine answers, the image runs without a network, podman runs the same rootfs.
#[test]
fn harness_runs_containers_from_the_local_image() {
    let image = docker::image();
    assert!(image.starts_with("sha256:"), "image ID: {image}");
    let run = docker::docker(&["run", "--rm", "--network", "none", &image, "sh", "-c", "echo hello"]);
    assert_eq!(run.ok().trim(), "hello");
    let podman_image = docker::podman_image();
    let container = Container::run_detached(Engine::Podman, &["--network", "none", &podman_image, "sleep", "30"]);
    assert_eq!(container.exec(&["echo", "hi"]).ok().trim(), "hi");
    docker::swarm();
    assert_eq!(docker::docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).ok().trim(), "active");
}
