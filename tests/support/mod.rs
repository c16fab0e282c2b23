//! Black-box test harness: a real `redis-server` and the real `redis-proxy`
//! binary, each on its own port and killed on drop, plus a TCP relay that can
//! slow the backend down. Tests seed Redis directly and talk to the proxy as any
//! client would.
#![allow(dead_code, unused_imports)] // each test file uses a different part of the harness

mod cluster;
mod pki;
mod proxy;
mod redis_server;
mod relay;
mod sentinel;

pub use cluster::RedisCluster;
pub use pki::{Pki, TlsStream, tls_connect};
pub use proxy::{Proxy, ProxyBuilder};
pub use redis_server::{RedisServer, TlsRedisServer};
pub use relay::Relay;
pub use sentinel::{MASTER, SentinelSet};

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// Where `make clients` installs redis-py, for `PYTHONPATH`.
pub fn python_path() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/clients/python");
    assert!(
        path.join("redis").exists(),
        "redis-py is not installed: run `make clients`"
    );
    path
}

/// Makes the child `command` starts die with the test that started it, even
/// when the test is killed (a timeout) and never drops its handle: the
/// kernel sends it SIGKILL when the spawning thread ends.
pub fn dies_with_test(command: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: `prctl` is async-signal-safe, as `pre_exec` requires.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

/// A port that was free a moment ago (the caller must cope with losing a race).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// Whether something accepts TCP connections at `addr`.
pub fn is_listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// One HTTP/1.1 `GET` over a plain socket (no client library, no runtime): the
/// status code and the body. Panics when no answer comes within 10 s.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("an answer");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A RESP bulk string's bytes, as text.
pub fn bulk(value: &str) -> String {
    format!("${}\r\n{value}\r\n", value.len())
}

/// A raw TCP connection for speaking RESP byte by byte.
pub struct RawConn {
    stream: std::net::TcpStream,
}

impl RawConn {
    /// Connects to `addr` with a 5 s read timeout.
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Self { stream }
    }

    /// Sets how long a read waits before it gives up (and returns what it has).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("timeout");
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
        use std::io::Write;
        self.stream.write_all(bytes).expect("write");
        self
    }

    /// Reads until exactly `n` bytes have arrived (or the timeout passes).
    pub fn read_exact_len(&mut self, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.stream.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        buf.truncate(got);
        buf
    }

    /// Reads until `expected.len()` bytes arrived and returns them.
    pub fn expect(&mut self, expected: &[u8]) {
        let got = self.read_exact_len(expected.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "reply bytes"
        );
    }

    /// Reads one line (through `\r\n`).
    pub fn read_line(&mut self) -> String {
        use std::io::Read;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            match self.stream.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&line).into_owned()
    }

    /// Sends `args` as one RESP command and reads its reply, as raw text.
    pub fn command(&mut self, args: &[&str]) -> String {
        let mut frame = format!("*{}\r\n", args.len());
        for arg in args {
            frame.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.send(frame.as_bytes());
        self.read_reply()
    }

    /// The connection's `CLIENT ID`, as text.
    pub fn client_id(&mut self) -> String {
        let reply = self.command(&["CLIENT", "ID"]);
        reply.trim_start_matches(':').trim().to_owned()
    }

    /// Reads one whole RESP2/RESP3 reply, nested ones included, as its raw text.
    pub fn read_reply(&mut self) -> String {
        let line = self.read_line();
        let count = |line: &str| line[1..line.len() - 2].parse::<i64>().unwrap_or(0);
        match line.as_bytes().first() {
            Some(b'$' | b'=' | b'!') if count(&line) >= 0 => {
                let body = self.read_exact_len(count(&line) as usize + 2);
                line + &String::from_utf8_lossy(&body)
            }
            Some(b'*' | b'~' | b'>') => {
                let mut all = line.clone();
                for _ in 0..count(&line).max(0) {
                    all.push_str(&self.read_reply());
                }
                all
            }
            Some(b'%') => {
                let mut all = line.clone();
                for _ in 0..2 * count(&line).max(0) {
                    all.push_str(&self.read_reply());
                }
                all
            }
            _ => line,
        }
    }

    /// Whether the server closed the connection (reads EOF within the timeout).
    pub fn is_closed_by_server(&mut self) -> bool {
        use std::io::Read;
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
            || matches!(self.stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }

    /// Closes the writing half.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}
