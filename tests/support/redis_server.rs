//! A throwaway `redis-server` on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

/// A running `redis-server`, killed (and its directory removed) on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server with persistence off.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--option value` arguments (e.g. `--requirepass`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::try_start_with(extra)
            .expect("redis-server did not start (is it installed? `apt-get install redis-server`)")
    }

    /// [`RedisServer::start_with`], `None` when the server does not start on
    /// any of a few free ports (another port in `extra` may be taken).
    pub fn try_start_with(extra: &[&str]) -> Option<Self> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("redis-proxy-test-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create redis dir");
            let child = spawn(port, &dir, &extra);
            let mut server = Self {
                child,
                port,
                dir,
                extra: extra.clone(),
            };
            if server.wait_ready() {
                return Some(server);
            }
            // Lost the port race, or failed: try another port.
        }
        None
    }

    /// Stops the server (SIGKILL: no goodbye to its clients, as in a crash).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port, after [`RedisServer::stop`].
    pub fn restart(&mut self) {
        self.child = spawn(self.port, &self.dir, &self.extra);
        assert!(
            self.wait_ready(),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// Freezes the server (SIGSTOP): its sockets stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling a child this harness started and has not reaped.
        let sent = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(sent, 0, "signal {signal} to redis-server");
    }

    /// Whether the server process is still running.
    pub fn is_running(&self) -> bool {
        // A killed child stays a zombie until it is waited for.
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .is_ok_and(|stat| stat.split_whitespace().nth(2) != Some("Z"))
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A direct connection, bypassing the proxy.
    pub fn client(&self) -> redis::Connection {
        let password = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .map(|i| self.extra[i + 1].clone());
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("direct connection to redis")
    }

    /// Sets `key` to `value` directly in Redis.
    pub fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        redis::cmd("SET")
            .arg(key.as_ref())
            .arg(value.as_ref())
            .query::<()>(&mut self.client())
            .expect("SET");
    }

    /// Runs any command directly in Redis.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.client()).expect("redis command")
    }

    /// How many times Redis has executed `command` (from `INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("a count"))
    }

    /// A counter from `INFO stats`, such as `total_reads_processed`.
    pub fn stat(&self, name: &str) -> u64 {
        let info: String = self.cmd(&["INFO", "stats"]);
        let prefix = format!("{name}:");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|n| n.trim().parse().expect("a count"))
            .unwrap_or_else(|| panic!("INFO stats has no {name}"))
    }

    fn wait_ready(&mut self) -> bool {
        wait_until(Duration::from_secs(5), || {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true; // exited: checked below
            }
            redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .is_ok()
        }) && matches!(self.child.try_wait(), Ok(None))
    }
}

fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> Child {
    let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    super::dies_with_test(&mut Command::new(binary))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server (is it installed? `apt-get install redis-server`)")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` that speaks only TLS (`--port 0 --tls-port P`), with the
/// certificates of `pki`; talked to with `redis-cli --tls`. Killed on drop.
pub struct TlsRedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// `--cacert`, and with client authentication `--cert`/`--key`, for redis-cli.
    cli_tls: Vec<String>,
}

impl TlsRedisServer {
    /// Starts the server; with `auth_clients`, clients must present a
    /// certificate the CA signed (`tls-auth-clients yes`).
    pub fn start(pki: &super::Pki, auth_clients: bool) -> Self {
        let (client_cert, client_key) = pki.client("redis-cli");
        let cli_tls: Vec<String> = [
            "--tls".into(),
            "--cacert".into(),
            pki.ca().display().to_string(),
            "--cert".into(),
            client_cert.display().to_string(),
            "--key".into(),
            client_key.display().to_string(),
        ]
        .into();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "redis-proxy-test-tls-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("create redis dir");
            let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
            let child = super::dies_with_test(&mut Command::new(binary))
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .arg("--tls-cert-file")
                .arg(pki.server_cert())
                .arg("--tls-key-file")
                .arg(pki.server_key())
                .arg("--tls-ca-cert-file")
                .arg(pki.ca())
                .args([
                    "--tls-auth-clients",
                    if auth_clients { "yes" } else { "no" },
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut server = Self {
                child,
                port,
                dir,
                cli_tls: cli_tls.clone(),
            };
            let ready = wait_until(Duration::from_secs(5), || {
                matches!(server.child.try_wait(), Ok(Some(_)))
                    || server.try_cli(&["PING"]).is_some_and(|out| out == "PONG")
            });
            if ready && matches!(server.child.try_wait(), Ok(None)) {
                return server;
            }
        }
        panic!("redis-server did not start with TLS (is it built with TLS?)");
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// Runs a command with redis-cli over TLS; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} over TLS failed"))
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.cli_tls)
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
