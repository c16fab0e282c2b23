//! Redis Cluster as the backing store (`--redis-mode cluster`), against a real
//! cluster of three primaries and three replicas: keys read from the node that
//! owns their slot, `MOVED` and `ASK` followed, a failover and a resharding
//! served through, tracking on every node, two proxies kept coherent, reads
//! from replicas.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Proxy, ProxyBuilder, RedisCluster, http_get, wait_until};

fn proxy(cluster: &RedisCluster, extra: impl FnOnce(ProxyBuilder) -> ProxyBuilder) -> Proxy {
    let builder = ProxyBuilder::new(&cluster.seeds()).arg("--redis-mode", "cluster");
    extra(builder).start()
}

fn resp_get(proxy: &Proxy, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut proxy.redis_client())
        .expect("GET through the proxy")
}

fn wait_ready(proxy: &Proxy) {
    assert!(
        wait_until(Duration::from_secs(10), || {
            http_get(proxy.admin_addr(), "/readyz").0 == 200
        }),
        "the proxy did not become ready"
    );
}

#[test]
fn keys_on_every_primary_are_read_over_http_and_resp_and_mget_spans_them() {
    let cluster = RedisCluster::start();
    let keys = cluster.key_per_primary("k");
    for key in &keys {
        cluster.set(key, &format!("value of {key}"));
    }
    cluster.set("{user7}.name", "ann");
    cluster.set("{user7}.mail", "ann@example.com");
    let proxy = proxy(&cluster, |b| b);
    wait_ready(&proxy);
    for key in &keys {
        assert_eq!(
            http_get(proxy.http_addr(), &format!("/{key}")),
            (200, format!("value of {key}"))
        );
        assert_eq!(resp_get(&proxy, key), Some(format!("value of {key}")));
    }
    let mut client = proxy.redis_client();
    let mut mget = redis::cmd("MGET");
    for key in keys.iter().rev() {
        mget.arg(key);
    }
    mget.arg("missing").arg("{user7}.name").arg("{user7}.mail");
    let values: Vec<Option<String>> = mget.query(&mut client).unwrap();
    let mut expected: Vec<Option<String>> = keys
        .iter()
        .rev()
        .map(|k| Some(format!("value of {k}")))
        .collect();
    expected.extend([None, Some("ann".into()), Some("ann@example.com".into())]);
    assert_eq!(values, expected, "in the client's order");
    // Each primary served its own keys, and hash tags kept two keys together.
    for key in &keys {
        assert!(
            cluster.node_of(key).calls("get") >= 1,
            "{key} read from its node"
        );
    }
    assert_eq!(cluster.slot("{user7}.name"), cluster.slot("{user7}.mail"));
    // SELECT has nothing to select in a cluster.
    let refused: redis::RedisResult<()> = redis::cmd("SELECT").arg(1).query(&mut client);
    assert!(refused.unwrap_err().to_string().contains("cluster"));
}

/// Moves `slot` from primary `from` to primary `to` with its keys, as
/// `redis-cli --cluster reshard` does for each slot. With `finish: false` the
/// slot is left migrating (keys moved, ownership not yet handed over).
fn migrate(cluster: &RedisCluster, slot: u16, from: usize, to: usize, keys: &[&str], finish: bool) {
    let (from_id, to_id) = (cluster.id(from), cluster.id(to));
    let slot = slot.to_string();
    let _: () = cluster.nodes[to].cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    let _: () = cluster.nodes[from].cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let port = cluster.nodes[to].port().to_string();
    for key in keys {
        let _: () = cluster.nodes[from].cmd(&["MIGRATE", "127.0.0.1", &port, key, "0", "5000"]);
    }
    if finish {
        for node in &cluster.nodes {
            let _: redis::RedisResult<()> = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(&slot)
                .arg("NODE")
                .arg(&to_id)
                .query(&mut node.client());
        }
    }
}

#[test]
fn moved_and_ask_are_followed() {
    let cluster = RedisCluster::start();
    // Two keys in one slot: one read before the move, one after.
    let (a, b, c) = ("{m}.a", "{m}.b", "{m}.c");
    for key in [a, b, c] {
        cluster.set(key, &format!("v-{key}"));
    }
    let slot = cluster.slot(a);
    let from = cluster.owner(slot);
    let to = (0..cluster.nodes.len())
        .find(|&i| i != from && serves_slots(&cluster, i))
        .expect("another primary");
    let proxy = proxy(&cluster, |b| b);
    wait_ready(&proxy);
    assert_eq!(resp_get(&proxy, a), Some(format!("v-{a}")));
    let refreshes = proxy
        .metric("redis_proxy_cluster_refreshes_total")
        .unwrap_or(0.0);

    // ASK: the slot is migrating and key b has moved already: its old owner
    // answers ASK, the new one serves it after ASKING, the map stays as it was.
    migrate(&cluster, slot, from, to, &[b], false);
    assert_eq!(resp_get(&proxy, b), Some(format!("v-{b}")));
    assert!(
        cluster.nodes[to].calls("asking") >= 1,
        "ASKING sent to the importing node"
    );

    // MOVED: the slot has moved whole (its last keys with it); the proxy's map
    // is out of date.
    migrate(&cluster, slot, from, to, &[a, c], true);
    assert_eq!(resp_get(&proxy, c), Some(format!("v-{c}")));
    assert!(
        wait_until(Duration::from_secs(2), || {
            proxy
                .metric("redis_proxy_cluster_refreshes_total")
                .unwrap_or(0.0)
                > refreshes
        }),
        "MOVED refreshes the slot map"
    );
    // Once refreshed, reads of the slot go straight to the new owner.
    let moved_before = cluster.nodes[from].calls("get");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(resp_get(&proxy, "{m}.d"), None);
    assert_eq!(
        cluster.nodes[from].calls("get"),
        moved_before,
        "no longer asked"
    );
}

/// Whether node `node` is a primary serving slots.
fn serves_slots(cluster: &RedisCluster, node: usize) -> bool {
    (0..16384u16)
        .step_by(512)
        .any(|slot| cluster.owner(slot) == node)
}

#[test]
fn a_failed_primary_fails_fast_then_its_promoted_replica_serves() {
    let mut cluster = RedisCluster::start();
    let keys = cluster.key_per_primary("f");
    for key in &keys {
        cluster.set(key, "before");
    }
    // Replicas have the keys before the primary goes (replication is
    // asynchronous: a key not yet copied would be lost with its primary).
    for key in &keys {
        cluster.wait_replicated(key, "before");
    }
    let proxy = proxy(&cluster, |b| b.arg("--cache-ttl", "100ms"));
    wait_ready(&proxy);
    let slot = cluster.slot(&keys[0]);
    let victim = cluster.owner(slot);
    cluster.nodes[victim].stop();
    let start = Instant::now();
    // Other primaries' keys are served throughout; the dead primary's fail
    // fast until the cluster has promoted its replica, and succeed within a
    // moment of it.
    let (mut failed_fast, mut not_ready) = (false, false);
    let (mut promoted, mut recovered) = (None, None);
    let mut last = (0, String::new());
    while start.elapsed() < Duration::from_secs(45) {
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(
            http_get(proxy.http_addr(), &format!("/{}", keys[1])),
            (200, "before".into())
        );
        if promoted.is_none() && cluster.owner(slot) != victim {
            promoted = Some(start.elapsed());
        }
        let asked = Instant::now();
        last = http_get(proxy.http_addr(), &format!("/{}", keys[0]));
        if http_get(proxy.admin_addr(), "/readyz").0 == 503 {
            not_ready = true;
        }
        match last.0 {
            502 => {
                assert!(
                    asked.elapsed() < Duration::from_secs(2),
                    "a dead node fails fast"
                );
                failed_fast = true;
            }
            200 => {
                recovered = Some(start.elapsed());
                break;
            }
            _ => {}
        }
    }
    let promoted = promoted.expect("the cluster promoted the replica");
    let recovered = recovered.unwrap_or_else(|| panic!("never served again; last answer {last:?}"));
    assert!(
        failed_fast,
        "the dead primary's keys failed while it was down"
    );
    assert!(not_ready, "readiness said a slot had no reachable primary");
    assert!(
        recovered < promoted + Duration::from_secs(3),
        "served {recovered:?} after the kill, the cluster promoted at {promoted:?}"
    );
    cluster.wait_ok();
    wait_ready(&proxy);
}

#[test]
fn resharding_under_load_gives_no_wrong_answer_and_no_error() {
    let cluster = RedisCluster::start();
    let keys: Vec<String> = (0..300).map(|i| format!("r:{i}")).collect();
    for key in &keys {
        cluster.set(key, &format!("v-{key}"));
    }
    let proxy = proxy(&cluster, |b| b.arg("--cache-ttl", "50ms"));
    wait_ready(&proxy);
    let (wrong, errors, reads) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (proxy, keys, wrong, errors, reads, done) =
                (&proxy, &keys, &wrong, &errors, &reads, &done);
            scope.spawn(move || {
                let mut client = proxy.redis_client();
                let mut i = t;
                while !done.load(Ordering::SeqCst) {
                    let key = &keys[i % keys.len()];
                    match redis::cmd("GET")
                        .arg(key)
                        .query::<Option<String>>(&mut client)
                    {
                        Ok(Some(value)) if value == format!("v-{key}") => {}
                        Ok(other) => {
                            eprintln!("{key}: {other:?}");
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(error) => {
                            eprintln!("{key}: {error}");
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    reads.fetch_add(1, Ordering::SeqCst);
                    i += 7;
                }
            });
        }
        let (from, to) = (cluster.owner(0), cluster.owner(16383));
        let output = Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                &format!("127.0.0.1:{}", cluster.nodes[0].port()),
            ])
            .args([
                "--cluster-from",
                &cluster.id(from),
                "--cluster-to",
                &cluster.id(to),
            ])
            .args(["--cluster-slots", "1000", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster reshard");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        std::thread::sleep(Duration::from_millis(300));
        done.store(true, Ordering::SeqCst);
    });
    assert!(
        reads.load(Ordering::SeqCst) > 1000,
        "the load ran during the resharding"
    );
    assert_eq!(wrong.load(Ordering::SeqCst), 0, "wrong values");
    assert_eq!(errors.load(Ordering::SeqCst), 0, "errors");
}

#[test]
fn tracking_evicts_on_every_node_and_keeps_two_proxies_coherent() {
    let cluster = RedisCluster::start();
    let keys = cluster.key_per_primary("t");
    for key in &keys {
        cluster.set(key, "old");
    }
    let tracked = |b: ProxyBuilder| b.arg("--invalidation", "tracking").arg("--cache-ttl", "1h");
    let (first, second) = (proxy(&cluster, tracked), proxy(&cluster, tracked));
    wait_ready(&first);
    wait_ready(&second);
    for proxy in [&first, &second] {
        for key in &keys {
            assert_eq!(http_get(proxy.http_addr(), &format!("/{key}")).1, "old");
        }
    }
    for key in &keys {
        cluster.set(key, "new");
    }
    for proxy in [&first, &second] {
        for key in &keys {
            assert!(
                wait_until(Duration::from_millis(500), || {
                    http_get(proxy.http_addr(), &format!("/{key}")).1 == "new"
                }),
                "{key} still stale"
            );
        }
    }
}

#[test]
fn reads_go_to_replicas_when_asked() {
    let cluster = RedisCluster::start();
    let keys = cluster.key_per_primary("rep");
    for key in &keys {
        cluster.set(key, "v");
    }
    for key in &keys {
        cluster.wait_replicated(key, "v");
    }
    cluster.wait_replicas_listed();
    let proxy = proxy(&cluster, |b| b.arg("--read-from", "replica-preferred"));
    wait_ready(&proxy);
    for key in &keys {
        assert_eq!(resp_get(&proxy, key), Some("v".into()));
    }
    for key in &keys {
        let primary = cluster.owner(cluster.slot(key));
        let replica = cluster.replica_of(primary);
        assert!(
            cluster.nodes[replica].calls("get") >= 1,
            "{key} read from its replica"
        );
        assert_eq!(
            cluster.nodes[primary].calls("get"),
            0,
            "{key} not read from its primary"
        );
    }
}

#[test]
fn several_nodes_in_standalone_mode_are_refused_at_startup() {
    let output = ProxyBuilder::new("redis://127.0.0.1:7000,redis://127.0.0.1:7001")
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--redis-mode cluster"));
}

fn transparent(cluster: &RedisCluster) -> Proxy {
    proxy(cluster, |b| b.flag("--forward-commands"))
}

/// Sends `args` through the proxy and returns the reply, errors as `Err`.
fn run(proxy: &Proxy, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut proxy.redis_client())
}

#[test]
fn transparent_mode_routes_every_command_to_the_node_of_its_slot() {
    let cluster = RedisCluster::start();
    let proxy = transparent(&cluster);
    wait_ready(&proxy);
    let keys = cluster.key_per_primary("w");
    let mut client = proxy.redis_client();
    for key in &keys {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("v1")
            .query(&mut client)
            .unwrap();
        let direct: String = cluster.node_of(key).cmd(&["GET", key]);
        assert_eq!(direct, "v1", "{key} written on its own node");
        let _: () = redis::cmd("HSET")
            .arg(format!("{key}:h"))
            .arg("f")
            .arg("a")
            .query(&mut client)
            .unwrap();
    }
    // Cached reads are fetched from their key's node once, and dropped by writes.
    let hkey = format!("{}:h", keys[0]);
    for _ in 0..3 {
        let got: String = redis::cmd("HGET")
            .arg(&hkey)
            .arg("f")
            .query(&mut client)
            .unwrap();
        assert_eq!(got, "a");
    }
    assert_eq!(cluster.node_of(&hkey).calls("hget"), 1);
    let _: () = redis::cmd("HSET")
        .arg(&hkey)
        .arg("f")
        .arg("b")
        .query(&mut client)
        .unwrap();
    let got: String = redis::cmd("HGET")
        .arg(&hkey)
        .arg("f")
        .query(&mut client)
        .unwrap();
    assert_eq!(got, "b");
    // Keys of several slots in one command: Redis Cluster's own refusal.
    let crossslot = run(&proxy, &["MSET", &keys[0], "x", &keys[1], "y"]).unwrap_err();
    assert_eq!(crossslot.code(), Some("CROSSSLOT"), "{crossslot}");
    let _ = run(&proxy, &["MSET", "{tag}a", "1", "{tag}b", "2"]).unwrap();
    // A transaction and a blocking read on one slot's keys.
    let replies: Vec<redis::Value> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("{tag}n")
        .arg(1)
        .cmd("INCR")
        .arg("{tag}n")
        .query(&mut client)
        .unwrap();
    assert_eq!(replies[1], redis::Value::Int(2));
    let owner = cluster.owner(cluster.slot("{tag}q"));
    let port = cluster.nodes[owner].port();
    let pusher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut direct = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        let _: i64 = redis::cmd("RPUSH")
            .arg("{tag}q")
            .arg("job")
            .query(&mut direct)
            .unwrap();
    });
    let popped: (String, String) = redis::cmd("BLPOP")
        .arg("{tag}q")
        .arg(5)
        .query(&mut client)
        .unwrap();
    assert_eq!(popped.1, "job");
    pusher.join().unwrap();
}

#[test]
fn transparent_mode_follows_a_slot_that_moved() {
    let cluster = RedisCluster::start();
    let proxy = transparent(&cluster);
    wait_ready(&proxy);
    let (a, b) = ("{mv}.a", "{mv}.b");
    let _ = run(&proxy, &["SET", a, "1"]).unwrap();
    let slot = cluster.slot(a);
    let from = cluster.owner(slot);
    let to = (0..cluster.nodes.len())
        .find(|&i| i != from && serves_slots(&cluster, i))
        .expect("another primary");
    migrate(&cluster, slot, from, to, &[a], true);
    // The proxy's map still says `from`: MOVED sends the write on to `to`.
    let _ = run(&proxy, &["SET", b, "2"]).unwrap();
    let direct: String = cluster.nodes[to].cmd(&["GET", b]);
    assert_eq!(direct, "2");
    assert_eq!(run(&proxy, &["INCR", a]).unwrap(), redis::Value::Int(2));
}

#[test]
fn redis_py_through_a_transparent_proxy_over_a_cluster_gets_what_redis_answers() {
    let cluster = RedisCluster::start();
    let proxy = transparent(&cluster);
    wait_ready(&proxy);
    let direct = support::RedisServer::start();
    let transcript = |port: u16| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let output = Command::new("python3")
            .arg(dir.join("tests/clients/redis_py_forwarding.py"))
            .arg(port.to_string())
            .env("PYTHONPATH", dir.join("target/clients/python"))
            .env("KEY_TAG", "1")
            .output()
            .expect("run redis-py");
        assert!(
            output.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let expected = transcript(direct.port());
    let got = transcript(proxy.resp_addr().port());
    assert!(expected.lines().count() > 20);
    assert_eq!(got, expected);
}

#[test]
fn keyless_commands_reach_every_primary_and_scan_walks_them_all() {
    let cluster = RedisCluster::start();
    let proxy = proxy(&cluster, |b| {
        b.flag("--forward-commands")
            .flag("--forward-admin-commands")
    });
    wait_ready(&proxy);
    let mut client = proxy.redis_client();
    let mut keys: Vec<String> = (0..40).map(|i| format!("spread:{i}")).collect();
    keys.sort();
    for key in &keys {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("v")
            .query(&mut client)
            .unwrap();
    }
    let primaries: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&node| serves_slots(&cluster, node))
        .collect();
    assert_eq!(primaries.len(), 3);
    for &node in &primaries {
        let held: i64 = cluster.nodes[node].cmd(&["DBSIZE"]);
        assert!(held > 0, "every primary holds some of the keys");
    }

    // DBSIZE sums the primaries'; KEYS gathers them.
    assert_eq!(run(&proxy, &["DBSIZE"]).unwrap(), redis::Value::Int(40));
    let mut listed: Vec<String> = redis::cmd("KEYS")
        .arg("spread:*")
        .query(&mut client)
        .unwrap();
    listed.sort();
    assert_eq!(listed, keys);

    // SCAN goes from primary to primary: every key once, then cursor 0.
    let (mut cursor, mut seen, mut pages) = ("0".to_owned(), Vec::new(), 0);
    loop {
        let (next, page): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("COUNT")
            .arg(5)
            .query(&mut client)
            .unwrap();
        seen.extend(page);
        pages += 1;
        assert!(pages < 200, "SCAN never ended");
        if next == "0" {
            break;
        }
        cursor = next;
    }
    seen.sort();
    assert_eq!(seen, keys);
    assert!(pages > 3, "a page at least per primary");
    let invalid = run(&proxy, &["SCAN", "1023"]).unwrap_err();
    assert!(invalid.to_string().contains("invalid cursor"), "{invalid}");
    let bare = run(&proxy, &["SCAN"]).unwrap_err();
    assert!(
        bare.to_string().contains("wrong number of arguments"),
        "{bare}"
    );

    // A script loaded through the proxy runs on every primary's keys.
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('GET', KEYS[1])")
        .query(&mut client)
        .unwrap();
    for key in cluster.key_per_primary("spread") {
        let got: String = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(&key)
            .query(&mut client)
            .unwrap();
        assert_eq!(got, "v", "{key}");
    }
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .arg("0000000000000000000000000000000000000000")
        .query(&mut client)
        .unwrap();
    assert_eq!(exists, [1, 0]);

    // FLUSHALL empties every primary, and the proxy's cache with them.
    assert_eq!(resp_get(&proxy, "spread:1").as_deref(), Some("v"));
    assert_eq!(run(&proxy, &["FLUSHALL"]).unwrap(), redis::Value::Okay);
    for &node in &primaries {
        assert_eq!(cluster.nodes[node].cmd::<i64>(&["DBSIZE"]), 0);
    }
    assert_eq!(resp_get(&proxy, "spread:1"), None);
    assert_eq!(run(&proxy, &["DBSIZE"]).unwrap(), redis::Value::Int(0));
}
