//! Transparent mode as clients that read the server see it: `INFO` is
//! Redis's own with the proxy's section appended (redis-py parses it),
//! `CONFIG RESETSTAT` resets the proxy's counts too, and `AUTH` without
//! proxy users is answered by Redis exactly as Redis answers it.

mod support;

use std::process::Command;

use support::{Proxy, ProxyBuilder, RawConn, RedisServer};

fn call(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let mut conn = RawConn::connect(addr);
    let mut out = format!("*{}\r\n", args.len());
    for arg in args {
        out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    conn.send(out.as_bytes());
    conn.read_reply()
}

fn transparent(redis: &RedisServer) -> Proxy {
    ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .flag("--forward-admin-commands")
        .start()
}

#[test]
fn info_is_redis_own_with_the_proxy_section_and_redis_py_reads_it() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = transparent(&redis);
    assert!(call(proxy.resp_addr(), &["GET", "k"]).ends_with("v\r\n"));
    call(proxy.resp_addr(), &["GET", "k"]);

    let info = call(proxy.resp_addr(), &["INFO"]);
    let direct = call(redis_addr(&redis), &["INFO", "server"]);
    let version = direct
        .lines()
        .find(|line| line.starts_with("redis_version:"))
        .unwrap();
    for line in [version, "arch_bits:", "total_commands_processed:", "# Proxy", "proxy_cache_entries:1", "proxy_cache_hits:1"] {
        assert!(info.contains(line), "{line:?} missing:\n{info}");
    }
    assert!(info.ends_with("\r\n\r\n") || info.ends_with("\r\n"), "{info:?}");
    let only = call(proxy.resp_addr(), &["INFO", "proxy"]);
    assert!(only.contains("# Proxy\r\n") && !only.contains("# Server"), "{only}");
    let server = call(proxy.resp_addr(), &["INFO", "server"]);
    assert!(server.contains(version) && !server.contains("# Proxy"), "{server}");

    let script = "import redis, sys\n\
        r = redis.Redis(port=int(sys.argv[1]))\n\
        info = r.info()\n\
        proxy = r.info('proxy')\n\
        print(info['arch_bits'], info['redis_version'], proxy['proxy_cache_entries'])\n";
    let output = Command::new("python3")
        .args(["-c", script, &proxy.resp_addr().port().to_string()])
        .env("PYTHONPATH", support::python_path())
        .output()
        .expect("python3");
    let printed = String::from_utf8_lossy(&output.stdout);
    let version = version.trim_start_matches("redis_version:").trim();
    assert_eq!(
        printed.trim(),
        format!("64 {version} 1"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn redis_addr(redis: &RedisServer) -> std::net::SocketAddr {
    format!("127.0.0.1:{}", redis.port()).parse().unwrap()
}

#[test]
fn config_resetstat_resets_the_proxy_counts_too() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = transparent(&redis);
    for _ in 0..3 {
        call(proxy.resp_addr(), &["GET", "k"]);
    }
    let before = call(proxy.resp_addr(), &["INFO", "proxy"]);
    assert!(before.contains("proxy_cache_hits:2\r\n"), "{before}");
    assert_eq!(call(proxy.resp_addr(), &["CONFIG", "RESETSTAT"]), "+OK\r\n");
    let after = call(proxy.resp_addr(), &["INFO", "proxy"]);
    assert!(after.contains("proxy_cache_hits:0\r\n"), "{after}");
    assert!(after.contains("proxy_cache_misses:0\r\n"), "{after}");
    let stats = call(proxy.resp_addr(), &["INFO", "stats"]);
    let processed: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(processed < 10, "Redis's own counts were reset too: {processed}");
}

#[test]
fn auth_without_proxy_users_is_answered_by_redis_as_redis_answers_it() {
    for extra in [&[][..], &["--requirepass", "s3cret"][..]] {
        let redis = RedisServer::start_with(extra);
        let url = match extra.is_empty() {
            true => redis.url(),
            false => format!("redis://:s3cret@127.0.0.1:{}", redis.port()),
        };
        let proxy = ProxyBuilder::new(&url).flag("--forward-commands").start();
        for args in [
            &["AUTH", "wrong"][..],
            &["AUTH", "default", "wrong"],
            &["AUTH", "s3cret"],
            &["AUTH", "nobody", "s3cret"],
        ] {
            let direct = call(redis_addr(&redis), args);
            assert_eq!(
                call(proxy.resp_addr(), args),
                direct,
                "{args:?} with {extra:?}"
            );
        }
    }
}
