//! `make run` (`scripts/run-local.sh`): it exits with the proxy's status, and
//! starts a throwaway Redis only at the *effective* address, as the proxy
//! itself reads it (`--print-config`), when that address is local and silent.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{free_port, is_listening, wait_until};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/run-local.sh");
const PROXY: &str = env!("CARGO_BIN_EXE_redis-proxy");

fn script(args: &[&str]) -> Command {
    let mut command = Command::new(SCRIPT);
    command
        .arg(PROXY)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("REDIS_PROXY_REDIS_URL")
        .env_remove("REDIS_PROXY_CONFIG");
    support::dies_with_test(&mut command);
    command
}

fn run(args: &[&str]) -> Output {
    script(args).output().expect("run scripts/run-local.sh")
}

#[test]
fn a_configuration_the_proxy_refuses_is_the_scripts_exit_2_and_starts_no_redis() {
    let output = run(&["--cache-ttl", "soon"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--cache-ttl"), "{stderr}");
    assert!(!stderr.contains("throwaway"), "{stderr}");
}

#[test]
fn an_address_in_use_is_the_scripts_exit_1() {
    let redis = support::RedisServer::start();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let output = run(&[
        "--redis-url",
        &redis.url(),
        "--http-addr",
        &taken,
        "--resp-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Address already in use"), "{stderr}");
}

#[test]
fn the_throwaway_redis_listens_where_the_config_file_says_and_stops_with_the_proxy() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("redis-proxy-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "redis_url = \"redis://127.0.0.1:{port}\"\nhttp_addr = \"127.0.0.1:0\"\n\
             resp_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let mut child = script(&["--config", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The startup line comes once the proxy listens.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let started = stdout
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("listening"));
    assert!(started, "the proxy started");
    let redis: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(is_listening(redis), "a Redis on the file's port {port}");

    // SAFETY: signalling a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a stop on SIGTERM is a success");
    assert!(
        wait_until(Duration::from_secs(5), || !is_listening(redis)),
        "the throwaway Redis stopped with the proxy"
    );
    let _ = std::fs::remove_dir_all(dir);
}
