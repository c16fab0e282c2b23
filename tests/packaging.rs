//! The Docker files as an evaluator's machine needs them: one pinned toolchain,
//! nothing pulled but the base images, the runtime image as what a plain
//! `docker build` yields, ports published on loopback. (`scripts/docker-path.sh`
//! builds and runs them for real in CI.)

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of `ARG RUST_VERSION=…` in a Dockerfile.
fn pinned_rust(dockerfile: &str) -> String {
    read(dockerfile)
        .lines()
        .find_map(|line| line.strip_prefix("ARG RUST_VERSION="))
        .unwrap_or_else(|| panic!("{dockerfile} pins no RUST_VERSION"))
        .trim()
        .to_owned()
}

#[test]
fn dockerfiles_pin_the_toolchain_that_cargo_toml_names() {
    let manifest = read("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .expect("Cargo.toml has a rust-version")
        .trim_matches('"');
    assert_eq!(
        rust_version,
        env!("CARGO_PKG_RUST_VERSION"),
        "cargo reads the same field"
    );
    for dockerfile in ["docker/Dockerfile", "docker/Dockerfile.test"] {
        assert_eq!(pinned_rust(dockerfile), rust_version, "{dockerfile}");
        assert!(
            read(dockerfile).contains("FROM rust:${RUST_VERSION}-bookworm"),
            "{dockerfile} builds on the pinned toolchain"
        );
    }
}

#[test]
fn dockerfiles_pull_no_frontend_image() {
    for dockerfile in ["docker/Dockerfile", "docker/Dockerfile.test"] {
        let text = read(dockerfile);
        assert!(
            !text
                .lines()
                .any(|l| l.to_ascii_lowercase().starts_with("# syntax")),
            "{dockerfile} names a BuildKit frontend, which is pulled from Docker Hub"
        );
        assert!(
            !text.contains("--mount="),
            "{dockerfile}: BuildKit-only syntax"
        );
    }
}

#[test]
fn a_plain_docker_build_yields_the_runtime_image() {
    let text = read("docker/Dockerfile");
    let last_stage = text
        .lines()
        .rfind(|l| l.starts_with("FROM "))
        .expect("a stage");
    assert!(last_stage.ends_with(" AS runtime"), "{last_stage}");
    assert!(text.contains("ENTRYPOINT [\"redis-proxy\"]"));
}

#[test]
fn compose_publishes_ports_on_loopback_by_default() {
    let compose = read("docker/docker-compose.yml");
    let published: Vec<&str> = compose
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("- \"") && l.matches(':').count() >= 2)
        .collect();
    assert_eq!(published.len(), 3, "{published:?}");
    for port in published {
        assert!(
            port.starts_with("- \"${PUBLISH_ADDR:-127.0.0.1}:"),
            "{port} is not bound to 127.0.0.1 by default"
        );
    }
}
