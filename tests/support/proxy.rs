//! The real `redis-proxy` binary, started with JSON logs so the harness can read
//! the addresses it actually bound (it is given port 0: no port race).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to start a proxy.
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    default_http_addr: bool,
    open_files: Option<u64>,
}

impl ProxyBuilder {
    /// A proxy in front of the Redis at `redis_url`.
    pub fn new(redis_url: &str) -> Self {
        Self {
            args: vec!["--redis-url".into(), redis_url.into()],
            envs: Vec::new(),
            default_http_addr: true,
            open_files: None,
        }
    }

    /// A proxy with no options set at all.
    pub fn bare() -> Self {
        Self {
            args: Vec::new(),
            envs: Vec::new(),
            default_http_addr: false,
            open_files: None,
        }
    }

    /// Adds `--flag value`.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.into());
        self.args.push(value.to_string());
        self
    }

    /// Adds a flag that takes no value.
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.into());
        self
    }

    /// Sets an environment variable for the process.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.envs.push((key.into(), value.to_string()));
        self
    }

    /// Runs the process with this open-files limit, soft and hard (as `ulimit
    /// -n` would), so that it cannot raise it.
    pub fn open_files_limit(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// Leaves `--http-addr` to the configuration instead of a system-chosen port.
    pub fn without_default_http_addr(mut self) -> Self {
        self.default_http_addr = false;
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_redis-proxy"));
        // A hermetic environment: only what the test sets.
        for (key, _) in std::env::vars() {
            if key.starts_with("REDIS_PROXY_") {
                command.env_remove(key);
            }
        }
        super::dies_with_test(&mut command);
        command.env("RUST_LOG", "info");
        command.args(["--log-format", "json"]);
        if self.default_http_addr {
            command.args(["--http-addr", "127.0.0.1:0"]);
        }
        // Every proxy binds its RESP and admin listeners; port 0 keeps parallel
        // tests apart.
        command.args(["--resp-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"]);
        command.args(&self.args);
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        if let Some(limit) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: `setrlimit` is async-signal-safe, as `pre_exec` requires.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        command
    }

    /// Starts the binary with its output captured.
    fn spawn(&self) -> Child {
        self.command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn redis-proxy")
    }

    /// Starts the binary and returns at once, its output discarded: for tests
    /// of what happens before it is ready.
    pub fn spawn_quiet(&self) -> Child {
        self.command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-proxy")
    }

    /// Runs the binary to completion (for options that should make it exit).
    pub fn run_to_exit(&self, timeout: Duration) -> Output {
        let mut child = self.spawn();
        let deadline = Instant::now() + timeout;
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("redis-proxy did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait_with_output().expect("output")
    }

    /// Starts the proxy and waits until it listens.
    pub fn start(&self) -> Proxy {
        let mut child = self.spawn();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let sink = logs.clone();
        // Drain stdout for the process's whole life so logging never blocks it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let ready = listening_addr(&line);
                sink.lock().unwrap().push(line);
                if let Some(addr) = ready {
                    let _ = ready_tx.send(addr);
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let err_sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                err_sink.lock().unwrap().push(line);
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(15)) {
            Ok((http, resp, admin)) => Proxy {
                child,
                http,
                resp,
                admin,
                logs,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "redis-proxy did not start; its output:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        }
    }
}

/// The HTTP, RESP and admin addresses from the proxy's JSON startup line.
fn listening_addr(line: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    let addr = |name: &str| fields.get(name)?.as_str()?.parse().ok();
    Some((addr("http")?, addr("resp")?, addr("admin")?))
}

/// A running proxy, killed on drop.
pub struct Proxy {
    child: Child,
    http: SocketAddr,
    resp: SocketAddr,
    admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// `http://ADMIN/{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.admin)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory, in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the proxy's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kib| kib.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// The value of a metric without labels from `/metrics`, if present.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = super::http_get(self.admin, "/metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    /// The bound Redis-protocol address.
    pub fn resp_addr(&self) -> SocketAddr {
        self.resp
    }

    /// A redis-rs client connection to the proxy's RESP listener.
    pub fn redis_client(&self) -> redis::Connection {
        redis::Client::open(format!("redis://{}", self.resp))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connect to the proxy over RESP")
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// `http://ADDR/{path}` (the path is used as given: encode it yourself).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.http)
    }

    /// Every line the process has written so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "redis-proxy did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
