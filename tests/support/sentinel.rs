//! A Sentinel-managed set on free loopback ports: a primary, one replica and
//! three sentinels (`redis-server sentinel.conf --sentinel`) that fail over
//! within seconds (`down-after-milliseconds 1000`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{RedisServer, free_port, wait_until};

/// The monitored master's name.
pub const MASTER: &str = "mymaster";

/// One sentinel process, killed (and its directory removed) on drop.
pub struct SentinelProcess {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary, its replica and three sentinels.
pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<SentinelProcess>,
}

impl SentinelSet {
    /// Starts everything and waits until every sentinel knows the replica
    /// and the two other sentinels (what a failover needs).
    pub fn start() -> Self {
        let primary = RedisServer::start();
        let port = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
        let sentinels: Vec<SentinelProcess> =
            (0..3).map(|_| Self::sentinel(primary.port())).collect();
        let set = Self {
            primary,
            replica,
            sentinels,
        };
        let known = wait_until(Duration::from_secs(30), || {
            set.sentinels.iter().all(|s| {
                let replicas = set.ask(s.port, &["SENTINEL", "REPLICAS", MASTER]);
                let peers = set.ask(s.port, &["SENTINEL", "SENTINELS", MASTER]);
                replicas.contains(&set.replica.port().to_string())
                    && peers.matches("name").count() == 2
            })
        });
        assert!(
            known,
            "the sentinels did not find the replica and each other"
        );
        set
    }

    fn sentinel(primary: u16) -> SentinelProcess {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "redis-proxy-sentinel-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir.display()
            ),
        )
        .unwrap();
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = super::dies_with_test(&mut Command::new(binary))
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server --sentinel");
        assert!(
            wait_until(Duration::from_secs(5), || super::is_listening(
                format!("127.0.0.1:{port}").parse().unwrap()
            )),
            "sentinel on {port} did not start"
        );
        SentinelProcess { child, port, dir }
    }

    /// `redis://127.0.0.1:S1,redis://127.0.0.1:S2,...`
    pub fn url(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A command's reply from the sentinel at `port`, as text (empty when
    /// it does not answer).
    pub fn ask(&self, port: u16, args: &[&str]) -> String {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
            return String::new();
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            return String::new();
        };
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query::<redis::Value>(&mut conn)
            .map(|value| format!("{value:?}"))
            .unwrap_or_default()
    }

    /// The port the first sentinel names as the primary's.
    pub fn primary_port(&self) -> Option<u16> {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}", self.sentinels[0].port)).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER)
            .query(&mut conn)
            .ok()?;
        Some(port)
    }
}
