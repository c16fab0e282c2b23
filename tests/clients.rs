//! Real, unmodified Redis clients through the proxy: redis-cli, redis-benchmark,
//! redis-py (RESP2 and RESP3), ioredis and node-redis.
//!
//! The client libraries are installed by `make clients` (part of `make test`)
//! into ignored folders: `target/clients/python` and `tests/clients/node_modules`.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{Proxy, ProxyBuilder, RedisServer};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Redis and a proxy in front of it, seeded with the keys the client scripts expect.
fn seeded() -> (RedisServer, Proxy) {
    let redis = RedisServer::start();
    redis.set("k", "v");
    redis.set("bin", (0..=255u8).collect::<Vec<u8>>());
    let mut in_two = redis.client();
    redis::pipe()
        .cmd("SELECT")
        .arg(2)
        .cmd("SET")
        .arg("k")
        .arg("v2")
        .query::<()>(&mut in_two)
        .expect("seed database 2");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    (redis, proxy)
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn redis_cli(proxy: &Proxy, args: &[&str]) -> String {
    let port = proxy.resp_addr().port().to_string();
    let output = run(Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn redis_cli_pings_and_gets_over_resp2_and_resp3() {
    let (_redis, proxy) = seeded();
    assert_eq!(redis_cli(&proxy, &["PING"]), "PONG\n");
    assert_eq!(redis_cli(&proxy, &["GET", "k"]), "v\n");
    assert_eq!(
        redis_cli(&proxy, &["--no-raw", "GET", "missing"]),
        "(nil)\n"
    );
    assert_eq!(redis_cli(&proxy, &["-3", "GET", "k"]), "v\n");
    assert_eq!(
        redis_cli(&proxy, &["-3", "--no-raw", "GET", "missing"]),
        "(nil)\n"
    );
    let refused = redis_cli(&proxy, &["SET", "k", "x"]);
    assert!(refused.contains("unsupported command 'SET'"), "{refused}");
}

#[test]
fn redis_benchmark_runs_to_completion_with_and_without_pipelining() {
    let (_redis, proxy) = seeded();
    let port = proxy.resp_addr().port().to_string();
    for pipeline in ["1", "16"] {
        let output = run(Command::new("redis-benchmark").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "get",
            "-n",
            "20000",
            "-c",
            "20",
            "-r",
            "100",
            "-P",
            pipeline,
            "-q",
        ]));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains("GET:") && text.contains("requests per second"),
            "{text}"
        );
    }
}

#[test]
fn redis_py_works_with_protocol_2_and_3() {
    let (_redis, proxy) = seeded();
    let script = manifest_dir().join("tests/clients/redis_py_check.py");
    let output = run(Command::new("python3")
        .arg(script)
        .arg(proxy.resp_addr().port().to_string())
        .env("PYTHONPATH", support::python_path()));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("protocol 2: ok") && text.contains("protocol 3: ok"),
        "{text}"
    );
}

#[test]
fn ioredis_and_node_redis_connect_and_get() {
    let (_redis, proxy) = seeded();
    let dir = manifest_dir().join("tests/clients");
    assert!(
        dir.join("node_modules/ioredis").exists() && dir.join("node_modules/redis").exists(),
        "ioredis and node-redis are not installed: run `make clients`"
    );
    let output = run(Command::new("node")
        .arg(dir.join("node_check.mjs"))
        .arg(proxy.resp_addr().port().to_string()));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("ioredis: ok") && text.contains("node-redis: ok"),
        "{text}"
    );
}
