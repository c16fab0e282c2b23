//! Black-box test harness: a real `redis-server` and the real `redis-proxy`
//! binary, each on its own port and killed on drop, plus a TCP relay that can
//! slow the backend down. Tests seed Redis directly and talk to the proxy as any
//! client would.
#![allow(dead_code, unused_imports)] // each test file uses a different part of the harness

mod proxy;
mod redis_server;
mod relay;

pub use proxy::{Proxy, ProxyBuilder};
pub use redis_server::RedisServer;
pub use relay::Relay;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

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
