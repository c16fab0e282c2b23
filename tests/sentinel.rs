//! A Sentinel-managed primary as the backing store: a real primary, replica
//! and three sentinels, a failover made by SIGKILL, timed against the
//! targets; dedicated connections ended by a switch; replica reads; an
//! unknown master name; the TOML form.

mod support;

use std::time::{Duration, Instant};

use support::{MASTER, Proxy, ProxyBuilder, RawConn, SentinelSet};

fn through_sentinels(set: &SentinelSet) -> ProxyBuilder {
    ProxyBuilder::new(&set.url())
        .arg("--redis-mode", "sentinel")
        .arg("--sentinel-master", MASTER)
        .arg("--request-timeout", "500ms")
}

fn get(proxy: &Proxy, key: &str) -> (u16, String) {
    support::http_get(proxy.http_addr(), &format!("/{key}"))
}

#[test]
fn reads_and_writes_follow_the_primary_across_a_failover() {
    let mut set = SentinelSet::start();
    set.primary.set("before", "v1");
    let proxy = through_sentinels(&set)
        .flag("--forward-commands")
        .arg("--invalidation", "tracking")
        .start();
    assert_eq!(get(&proxy, "before"), (200, "v1".to_owned()));
    let mut conn = RawConn::connect(proxy.resp_addr());
    conn.send(b"*3\r\n$3\r\nSET\r\n$1\r\nw\r\n$1\r\n1\r\n");
    assert_eq!(conn.read_reply(), "+OK\r\n");
    assert_eq!(set.primary.cmd::<String>(&["GET", "w"]), "1");
    assert!(support::wait_until(Duration::from_secs(5), || {
        set.replica.cmd::<Option<String>>(&["GET", "w"]).is_some()
    }));
    let (old, new) = (set.primary.port(), set.replica.port());

    set.primary.stop();
    let killed = Instant::now();
    assert!(
        support::wait_until(Duration::from_secs(30), || set.primary_port() == Some(new)),
        "the sentinels promoted the replica"
    );
    let switched = Instant::now();
    eprintln!("sentinels switched {:?} after the kill", switched - killed);
    assert_ne!(set.primary_port(), Some(old));
    set.replica.set("after", "v2");
    let read = loop {
        if get(&proxy, "after") == (200, "v2".to_owned()) {
            break switched.elapsed();
        }
        assert!(
            switched.elapsed() < Duration::from_secs(10),
            "never read from the new primary"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("uncached keys read from the new primary {read:?} after the switch");
    assert!(read < Duration::from_secs(3), "{read:?}");
    let wrote = loop {
        let mut conn = RawConn::connect(proxy.resp_addr());
        conn.send(b"*3\r\n$3\r\nSET\r\n$1\r\nw\r\n$1\r\n2\r\n");
        if conn.read_reply() == "+OK\r\n" && set.replica.cmd::<String>(&["GET", "w"]) == "2" {
            break switched.elapsed();
        }
        assert!(
            switched.elapsed() < Duration::from_secs(10),
            "writes never landed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("writes landed on the new primary {wrote:?} after the switch");
    assert!(wrote < Duration::from_secs(4), "{wrote:?}");
    // The cache was flushed on the switch, and the new primary tracks what
    // the proxy reads from it now.
    assert_eq!(get(&proxy, "before").1, "v1");
    set.replica.set("before", "changed");
    assert!(support::wait_until(Duration::from_secs(2), || {
        get(&proxy, "before").1 == "changed"
    }));
    assert!(support::wait_until(Duration::from_secs(3), || {
        support::http_get(proxy.admin_addr(), "/readyz").0 == 200
    }));
}

#[test]
fn a_switch_that_leaves_the_old_primary_up_ends_dedicated_connections_with_an_error() {
    let set = SentinelSet::start();
    let proxy = through_sentinels(&set).flag("--forward-commands").start();
    let mut subscriber = RawConn::connect(proxy.resp_addr());
    subscriber.send(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n");
    assert_eq!(
        subscriber.read_reply(),
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    let mut transaction = RawConn::connect(proxy.resp_addr());
    transaction.send(b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nt\r\n$1\r\n1\r\n");
    assert_eq!(transaction.read_reply(), "+OK\r\n");
    assert_eq!(transaction.read_reply(), "+QUEUED\r\n");

    // A failover by hand: the old primary stays up and becomes a replica,
    // its connections open; the subscription would go on hearing nothing
    // published on the new primary.
    let new = set.replica.port();
    let sentinel = set.sentinels[0].port;
    assert!(
        support::wait_until(Duration::from_secs(20), || {
            set.ask(sentinel, &["SENTINEL", "FAILOVER", MASTER]);
            support::wait_until(Duration::from_secs(3), || set.primary_port() == Some(new))
        }),
        "the sentinels did not fail over"
    );
    let ended = "-ERR redis primary switched (failover)";
    let told = subscriber.read_reply();
    assert!(told.starts_with(ended), "the subscriber was told: {told:?}");
    assert!(subscriber.is_closed_by_server());
    let told = transaction.read_reply();
    assert!(
        told.starts_with(ended),
        "the transaction was told: {told:?}"
    );
    // Shared requests go on, to the new primary.
    assert!(support::wait_until(Duration::from_secs(3), || {
        let mut conn = RawConn::connect(proxy.resp_addr());
        conn.send(b"*3\r\n$3\r\nSET\r\n$1\r\nw\r\n$1\r\n2\r\n");
        conn.read_reply() == "+OK\r\n"
    }));
    assert_eq!(set.replica.cmd::<String>(&["GET", "w"]), "2");
}

#[test]
fn with_replica_reads_misses_go_to_the_replica_the_sentinels_list() {
    let set = SentinelSet::start();
    let keys: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    for key in &keys {
        set.primary.set(key, format!("v-{key}"));
    }
    assert!(support::wait_until(Duration::from_secs(5), || {
        set.replica.cmd::<Option<String>>(&["GET", "r39"]).is_some()
    }));
    let proxy = through_sentinels(&set)
        .arg("--read-from", "replica-preferred")
        .start();
    // The sentinels may list the replica in sync only after their next look
    // at it; the proxy asks them again every 5 s.
    let mut keys = keys.iter();
    let before = set.replica.calls("get");
    assert!(
        support::wait_until(Duration::from_secs(12), || {
            let key = keys.next().expect("keys enough");
            assert_eq!(get(&proxy, key), (200, format!("v-{key}")));
            std::thread::sleep(Duration::from_millis(500));
            set.replica.calls("get") > before
        }),
        "no read reached the replica: {:?}",
        proxy.logs()
    );
    let (primary, replica) = (set.primary.calls("get"), set.replica.calls("get"));
    let batch: Vec<&String> = keys.by_ref().take(10).collect();
    for key in &batch {
        assert_eq!(get(&proxy, key), (200, format!("v-{key}")));
    }
    assert_eq!(set.replica.calls("get") - replica, batch.len() as u64);
    assert_eq!(
        set.primary.calls("get"),
        primary,
        "no miss went to the primary"
    );
}

#[test]
fn an_unknown_master_name_is_reported_by_name() {
    let set = SentinelSet::start();
    let proxy = ProxyBuilder::new(&set.url())
        .arg("--redis-mode", "sentinel")
        .arg("--sentinel-master", "nosuch")
        .start();
    let (status, body) = get(&proxy, "k");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("does not know a master named `nosuch`"),
        "{body}"
    );
    assert!(support::wait_until(Duration::from_secs(3), || {
        let (status, body) = support::http_get(proxy.admin_addr(), "/readyz");
        status == 503 && body.contains("`nosuch`")
    }));
}

#[test]
fn the_toml_form_with_one_url_for_every_sentinel_and_a_missing_master_name() {
    let set = SentinelSet::start();
    set.primary.set("k", "v");
    let file =
        std::env::temp_dir().join(format!("redis-proxy-sentinel-{}.toml", std::process::id()));
    // One URL naming every sentinel, as sentinels are often written.
    let hosts = set.url().replace(",redis://", ",");
    assert!(hosts.matches("redis://").count() == 1, "{hosts}");
    std::fs::write(
        &file,
        format!(
            "redis_url = \"{hosts}\"\nredis_mode = \"sentinel\"\nsentinel_master = \"{MASTER}\"\n"
        ),
    )
    .unwrap();
    let proxy = ProxyBuilder::bare()
        .arg("--config", file.display())
        .arg("--http-addr", "127.0.0.1:0")
        .start();
    assert_eq!(get(&proxy, "k"), (200, "v".to_owned()));
    let output = ProxyBuilder::new(&set.url())
        .arg("--redis-mode", "sentinel")
        .run_to_exit(Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--sentinel-master"));
    let _ = std::fs::remove_file(file);
}
