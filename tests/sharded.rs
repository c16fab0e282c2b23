//! A twemproxy-style sharded pool against nutcracker itself: keys written
//! through nutcracker are found through the proxy (and the other way round)
//! for every hash function, both deterministic distributions, with weights,
//! server names and a hash tag; each key asked of exactly one server.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{ProxyBuilder, RedisServer, bulk, free_port};

/// A running nutcracker, killed on drop.
struct Nutcracker {
    child: Child,
    port: u16,
    config: std::path::PathBuf,
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// One pool's settings, as nutcracker.yml writes them.
#[derive(Debug, Clone, Copy)]
struct Pool {
    hash: &'static str,
    distribution: &'static str,
    weights: [u32; 3],
    names: bool,
    hash_tag: Option<&'static str>,
}

impl Pool {
    fn servers(&self, redis: &[RedisServer]) -> Vec<String> {
        redis
            .iter()
            .zip(self.weights)
            .enumerate()
            .map(|(i, (server, weight))| {
                let name = if self.names {
                    format!(" server{i}")
                } else {
                    String::new()
                };
                format!("127.0.0.1:{}:{weight}{name}", server.port())
            })
            .collect()
    }

    fn yaml(&self, redis: &[RedisServer], port: u16) -> String {
        let mut yaml = format!(
            "pool:\n  listen: 127.0.0.1:{port}\n  hash: {}\n  distribution: {}\n  redis: true\n  \
             auto_eject_hosts: false\n",
            self.hash, self.distribution
        );
        if let Some(tag) = self.hash_tag {
            yaml.push_str(&format!("  hash_tag: \"{tag}\"\n"));
        }
        yaml.push_str("  servers:\n");
        for server in self.servers(redis) {
            yaml.push_str(&format!("   - {server}\n"));
        }
        yaml
    }

    fn nutcracker(&self, redis: &[RedisServer]) -> Nutcracker {
        start_nutcracker(|port| self.yaml(redis, port))
    }

    /// The proxy's TOML for the same pool.
    fn toml(&self, redis: &[RedisServer]) -> String {
        let servers: Vec<String> = self
            .servers(redis)
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect();
        let mut toml = format!(
            "redis_mode = \"sharded\"\nshard_hash = \"{}\"\nshard_distribution = \"{}\"\nshard_servers = [{}]\n",
            self.hash,
            self.distribution,
            servers.join(", ")
        );
        if let Some(tag) = self.hash_tag {
            toml.push_str(&format!("shard_hash_tag = \"{tag}\"\n"));
        }
        toml
    }
}

/// A proxy reading `nutcracker`'s own file.
fn reading(nutcracker: &Nutcracker) -> ProxyBuilder {
    ProxyBuilder::bare()
        .arg("--twemproxy-config", nutcracker.config.display())
        .arg("--resp-addr", "127.0.0.1:0")
        .arg("--http-addr", "127.0.0.1:0")
}

/// nutcracker on a free port, with the file `yaml` writes for that port.
fn start_nutcracker(yaml: impl FnOnce(u16) -> String) -> Nutcracker {
    let port = free_port();
    let config = std::env::temp_dir().join(format!(
        "redis-proxy-nutcracker-{}-{port}.yml",
        std::process::id()
    ));
    std::fs::write(&config, yaml(port)).unwrap();
    let child = support::dies_with_test(
        Command::new(which_nutcracker())
            .arg("-c")
            .arg(&config)
            .args(["-s", &free_port().to_string(), "-a", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .spawn()
    .expect("nutcracker (apt-get install nutcracker)");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(support::wait_until(Duration::from_secs(5), || {
        support::is_listening(addr)
    }));
    Nutcracker {
        child,
        port,
        config,
    }
}

fn which_nutcracker() -> String {
    ["/usr/sbin/nutcracker", "/usr/bin/nutcracker"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or("nutcracker")
        .to_owned()
}

/// A RESP client spoken by hand (nutcracker refuses the handshake commands
/// client libraries send first).
struct Client(support::RawConn);

impl Client {
    fn connect(port: u16) -> Self {
        Self(support::RawConn::connect(
            format!("127.0.0.1:{port}").parse().unwrap(),
        ))
    }

    fn call(&mut self, args: &[&[u8]]) -> String {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.0.send(&out);
        self.0.read_reply()
    }
}

/// 500 keys, some with bytes above 0x7f and some with hash tags.
fn keys() -> Vec<Vec<u8>> {
    (0..500)
        .map(|i| match i % 5 {
            0 => format!("ключ:{i}").into_bytes(),
            1 => format!("user:{{{}}}:{i}", i % 7).into_bytes(),
            2 => vec![0xff, 0x80, b'k', (i % 256) as u8, (i / 256) as u8],
            _ => format!("key:{i}").into_bytes(),
        })
        .collect()
}

fn gets(redis: &[RedisServer]) -> u64 {
    redis.iter().map(|r| r.calls("get")).sum()
}

fn toml_file(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "redis-proxy-sharded-{}-{}.toml",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_key_nutcracker_wrote_is_found_through_the_proxy_with_one_get() {
    let redis: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let pool = |hash, distribution, weights, names, hash_tag| Pool {
        hash,
        distribution,
        weights,
        names,
        hash_tag,
    };
    let pools = [
        pool("fnv1a_64", "ketama", [1, 1, 1], false, None),
        pool("md5", "ketama", [1, 2, 3], true, None),
        pool("murmur", "ketama", [3, 1, 1], true, Some("{}")),
        pool("jenkins", "ketama", [1, 1, 2], false, None),
        pool("one_at_a_time", "ketama", [1, 1, 1], true, None),
        pool("hsieh", "ketama", [2, 1, 1], false, None),
        pool("crc32a", "modula", [1, 2, 1], false, None),
        pool("crc16", "modula", [1, 1, 1], false, Some("{}")),
        pool("crc32", "ketama", [1, 1, 1], false, None),
        pool("fnv1_64", "modula", [2, 3, 1], false, None),
        pool("fnv1_32", "ketama", [1, 1, 1], true, None),
        pool("fnv1a_32", "modula", [1, 1, 1], false, None),
    ];
    for pool in pools {
        for server in &redis {
            server.cmd::<String>(&["FLUSHALL"]);
        }
        let nutcracker = pool.nutcracker(&redis);
        let mut through_nutcracker = Client::connect(nutcracker.port);
        let keys = keys();
        for (i, key) in keys.iter().enumerate() {
            let value = format!("v{i}");
            let reply = through_nutcracker.call(&[b"SET", key, value.as_bytes()]);
            assert_eq!(reply, "+OK\r\n", "{pool:?}");
        }
        let spread: Vec<i64> = redis.iter().map(|r| r.cmd(&["DBSIZE"])).collect();
        assert_eq!(
            spread.iter().sum::<i64>(),
            500,
            "{pool:?}: nutcracker wrote {spread:?}"
        );

        let file = toml_file(&pool.toml(&redis));
        let proxy = ProxyBuilder::bare()
            .arg("--config", file.display())
            .arg("--http-addr", "127.0.0.1:0")
            .start();
        let mut through_proxy = Client::connect(proxy.resp_addr().port());
        let before = gets(&redis);
        for (i, key) in keys.iter().enumerate() {
            let reply = through_proxy.call(&[b"GET", key]);
            let holder: Vec<bool> = redis
                .iter()
                .map(|r| r.cmd::<i64>(&["EXISTS", &String::from_utf8_lossy(key)]) == 1)
                .collect();
            assert_eq!(
                reply,
                bulk(&format!("v{i}")),
                "{pool:?}: key {key:?}, on {holder:?}, spread {spread:?}"
            );
        }
        assert_eq!(
            gets(&redis) - before,
            500,
            "{pool:?}: one GET per key, on one server"
        );
        let _ = std::fs::remove_file(file);
    }
}

#[test]
fn the_nutcracker_file_itself_and_writes_the_other_way() {
    let redis: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let pool = Pool {
        hash: "fnv1a_64",
        distribution: "ketama",
        weights: [1, 2, 1],
        names: true,
        hash_tag: Some("{}"),
    };
    let nutcracker = pool.nutcracker(&redis);
    let proxy = reading(&nutcracker).flag("--forward-commands").start();
    let mut through_proxy = Client::connect(proxy.resp_addr().port());
    let keys = keys();
    for (i, key) in keys.iter().enumerate() {
        let value = format!("w{i}");
        assert_eq!(
            through_proxy.call(&[b"SET", key, value.as_bytes()]),
            "+OK\r\n"
        );
    }
    let mut through_nutcracker = Client::connect(nutcracker.port);
    for (i, key) in keys.iter().enumerate() {
        let reply = through_nutcracker.call(&[b"GET", key]);
        assert_eq!(
            reply,
            bulk(&format!("w{i}")),
            "written through the proxy: {key:?}"
        );
    }
    // MGET across the servers answers in the client's order.
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(keys.iter().step_by(37).map(Vec::as_slice));
    let expected: String = (0..keys.len())
        .step_by(37)
        .map(|i| bulk(&format!("w{i}")))
        .collect();
    let count = keys.iter().step_by(37).count();
    assert_eq!(through_proxy.call(&mget), format!("*{count}\r\n{expected}"));
}

/// `GET key` on a connection of its own (nutcracker may close a client's
/// connection when the server it asked fails).
fn get_once(port: u16, key: &str) -> String {
    Client::connect(port).call(&[b"GET", key.as_bytes()])
}

#[test]
fn a_dead_server_is_ejected_its_keys_remapped_as_nutcracker_remaps_them_and_it_comes_back() {
    let mut redis: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    // Unequal weights: without the heaviest server, the others' shares of
    // the continuum change, not only its points' owners.
    let pool = Pool {
        hash: "fnv1a_64",
        distribution: "ketama",
        weights: [1, 2, 1],
        names: true,
        hash_tag: None,
    };
    let retry = Duration::from_secs(5);
    let nutcracker = start_nutcracker(|port| {
        pool.yaml(&redis, port).replace(
            "auto_eject_hosts: false\n",
            &format!(
                "auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: {}\n",
                retry.as_millis()
            ),
        )
    });
    let proxy = reading(&nutcracker).start();
    let proxy_port = proxy.resp_addr().port();
    let dead = 1;
    let dead_node = format!("127.0.0.1:{}", redis[dead].port());
    let mut through_nutcracker = Client::connect(nutcracker.port);
    let key_on_dead = (0..)
        .map(|i| format!("probe:{i}"))
        .find(|key| {
            through_nutcracker.call(&[b"SET", key.as_bytes(), b"x"]);
            redis[dead].cmd::<i64>(&["EXISTS", key]) == 1
        })
        .unwrap();

    redis[dead].stop();
    // Each ejects the server at its first failure; the key, remapped, is
    // then absent rather than failing.
    for (port, who) in [(nutcracker.port, "nutcracker"), (proxy_port, "the proxy")] {
        assert!(
            support::wait_until(Duration::from_secs(5), || get_once(port, &key_on_dead)
                == "$-1\r\n"),
            "{who} did not eject {dead_node}: {}",
            get_once(port, &key_on_dead)
        );
    }
    let ejected_at = std::time::Instant::now();
    let ejections = format!("redis_proxy_shard_ejections_total{{node=\"{dead_node}\"}}");
    assert_eq!(proxy.metric(&ejections), Some(1.0));
    // Readiness is the pinger's, at most a second or two old.
    assert!(
        support::wait_until(Duration::from_secs(3), || support::http_get(
            proxy.admin_addr(),
            "/readyz"
        )
        .0 == 200),
        "ready with the others answering: {:?}",
        support::http_get(proxy.admin_addr(), "/readyz")
    );

    let written = |prefix: &str| -> Vec<String> {
        let mut through_nutcracker = Client::connect(nutcracker.port);
        let keys: Vec<String> = (0..200).map(|i| format!("{prefix}:{i}")).collect();
        for key in &keys {
            let reply = through_nutcracker.call(&[b"SET", key.as_bytes(), key.as_bytes()]);
            assert_eq!(reply, "+OK\r\n", "{key}");
        }
        keys
    };
    let found_through_proxy = |keys: &[String], redis: &[RedisServer]| {
        let mut through_proxy = Client::connect(proxy_port);
        let live: Vec<&RedisServer> = redis.iter().filter(|r| r.is_running()).collect();
        let before: u64 = live.iter().map(|r| r.calls("get")).sum();
        for key in keys {
            assert_eq!(through_proxy.call(&[b"GET", key.as_bytes()]), bulk(key));
        }
        let after: u64 = live.iter().map(|r| r.calls("get")).sum();
        assert_eq!(after - before, keys.len() as u64, "one GET per key");
    };
    let remapped = written("remapped");
    found_through_proxy(&remapped, &redis);
    assert!(
        ejected_at.elapsed() < retry,
        "the remapped keys were checked while the server was out"
    );

    // Back after the retry timeout: keys nutcracker puts on it again are
    // found there through the proxy.
    redis[dead].restart();
    std::thread::sleep(retry.saturating_sub(ejected_at.elapsed()) + Duration::from_millis(500));
    let back = written("back");
    let on_dead: i64 = redis[dead].cmd(&["DBSIZE"]);
    assert!(
        on_dead > 0,
        "nutcracker put none of 200 keys on the server back in"
    );
    found_through_proxy(&back, &redis);
}

#[test]
fn transparent_mode_splits_multi_key_commands_by_server_as_twemproxy_does() {
    let redis: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let pool = Pool {
        hash: "md5",
        distribution: "ketama",
        weights: [1, 1, 1],
        names: false,
        hash_tag: None,
    };
    let nutcracker = pool.nutcracker(&redis);
    let proxy = reading(&nutcracker).flag("--forward-commands").start();
    let mut through_proxy = Client::connect(proxy.resp_addr().port());
    let mut through_nutcracker = Client::connect(nutcracker.port);
    let keys: Vec<String> = (0..30).map(|i| format!("split:{i}")).collect();
    let call = |client: &mut Client, name: &str, args: &[String]| {
        let mut all: Vec<&[u8]> = vec![name.as_bytes()];
        all.extend(args.iter().map(|a| a.as_bytes()));
        client.call(&all)
    };

    let pairs: Vec<String> = keys
        .iter()
        .flat_map(|k| [k.clone(), format!("v-{k}")])
        .collect();
    assert_eq!(call(&mut through_proxy, "MSET", &pairs), "+OK\r\n");
    let spread: Vec<i64> = redis.iter().map(|r| r.cmd(&["DBSIZE"])).collect();
    assert!(
        spread.iter().filter(|&&n| n > 0).count() >= 2,
        "the keys span servers: {spread:?}"
    );
    for key in &keys {
        assert_eq!(
            through_nutcracker.call(&[b"GET", key.as_bytes()]),
            bulk(&format!("v-{key}"))
        );
    }

    let with_missing: Vec<String> = keys.iter().cloned().chain(["split:none".into()]).collect();
    assert_eq!(call(&mut through_proxy, "EXISTS", &with_missing), ":30\r\n");
    assert_eq!(call(&mut through_proxy, "TOUCH", &with_missing), ":30\r\n");
    // A cached read, dropped by the split DEL that removes its key.
    assert_eq!(
        call(&mut through_proxy, "GET", &keys[..1]),
        bulk("v-split:0")
    );
    assert_eq!(call(&mut through_proxy, "DEL", &keys[..10]), ":10\r\n");
    assert_eq!(call(&mut through_proxy, "GET", &keys[..1]), "$-1\r\n");
    assert_eq!(
        call(&mut through_proxy, "UNLINK", &with_missing[10..20]),
        ":10\r\n"
    );
    assert_eq!(call(&mut through_proxy, "EXISTS", &with_missing), ":10\r\n");
    assert_eq!(through_nutcracker.call(&[b"GET", b"split:5"]), "$-1\r\n");
    assert_eq!(
        through_nutcracker.call(&[b"GET", b"split:25"]),
        bulk("v-split:25")
    );

    // A command that cannot be split, its keys on two servers: refused.
    let on = |key: &String| {
        redis
            .iter()
            .position(|r| r.cmd::<i64>(&["EXISTS", key]) == 1)
    };
    let a = &keys[20];
    let b = (0..)
        .map(|i| format!("other:{i}"))
        .find(|key| {
            call(&mut through_proxy, "SET", &[key.clone(), "x".into()]);
            on(key) != on(a)
        })
        .unwrap();
    let refused = call(
        &mut through_proxy,
        "SUNIONSTORE",
        &[a.clone(), a.clone(), b],
    );
    assert!(
        refused.starts_with("-CROSSSLOT Keys in request are on different servers"),
        "{refused}"
    );
}
