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

#[test]
fn the_crate_is_licensed_mit_or_apache_2_and_ships_both_texts() {
    assert!(read("Cargo.toml").contains("license = \"MIT OR Apache-2.0\""));
    assert!(read("LICENSE-MIT").starts_with("MIT License"));
    assert!(read("LICENSE-APACHE").contains("Apache License\n                        Version 2.0"));
    assert!(read("README.md").contains("MIT OR Apache-2.0"));
}

/// The upper-case variables `text` reads as `${NAME:-…}` or `$(NAME)`.
fn variables_read(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (open, close) in [("${", ":-"), ("$(", ")")] {
        let mut rest = text;
        while let Some(start) = rest.find(open) {
            rest = &rest[start + open.len()..];
            let Some(end) = rest.find(close) else { break };
            let name = &rest[..end];
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                names.push(name.to_owned());
            }
        }
    }
    names
}

#[test]
fn make_help_names_every_variable_a_target_reads() {
    let makefile = read("Makefile");
    let mut sources = vec![makefile.clone()];
    let mut rest = makefile.as_str();
    while let Some(start) = rest.find("scripts/") {
        rest = &rest[start..];
        let end = rest.find(".sh").map_or(rest.len(), |end| end + 3);
        if let Ok(script) =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&rest[..end]))
        {
            sources.push(script);
        }
        rest = &rest[end.min(rest.len())..];
    }
    // The Makefile's own plumbing, not settings.
    let internal = [
        "HAVE_CARGO",
        "HAVE_REDIS",
        "HAVE_DOCKER",
        "DC",
        "DCC",
        "MAKE",
        "MAKEFILE_LIST",
        "CLIENTS_STAMP",
        "COMPOSE_FILE",
        "COMPOSE_PROJECT",
        "TMPDIR",
        "HOME",
        "PATH",
    ];
    let listed: Vec<&str> = makefile
        .lines()
        .filter_map(|line| line.strip_prefix("#   "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for source in &sources {
        for name in variables_read(source) {
            assert!(
                internal.contains(&name.as_str()) || listed.contains(&name.as_str()),
                "`{name}` is read by a make target but not listed by `make help`"
            );
        }
    }
}
