//! A TCP relay between the proxy and Redis that can hold back Redis's replies,
//! to make the backend slow on demand. Real sockets, real Redis: only time is
//! added. Delays can apply to every reply, or only to replies that contain a
//! marker (a value seeded for the purpose), so that connection handshakes and
//! other keys stay fast.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A running relay, stopped (with every connection through it) on drop.
pub struct Relay {
    addr: SocketAddr,
    rule: Arc<Mutex<Rule>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays a free loopback port to `target`, delaying each reply by `delay`.
    pub fn start(target: SocketAddr, delay: Duration) -> Self {
        let rule = Arc::new(Mutex::new(Rule {
            delay,
            marker: None,
            refuse: false,
            generation: 0,
        }));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let shared = rule.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("relay runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(pipe(client, target, shared.clone()));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime cancels every relayed connection.
        });
        Self {
            addr: addr_rx.recv().expect("relay address"),
            rule,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `redis://ADDR` for the proxy to use.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Delays every reply read from now on by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        let mut rule = self.rule.lock().unwrap();
        rule.delay = delay;
        rule.marker = None;
    }

    /// Delays, from now on, only replies containing `marker`.
    pub fn delay_replies_containing(&self, marker: &[u8], delay: Duration) {
        let mut rule = self.rule.lock().unwrap();
        rule.delay = delay;
        rule.marker = Some(marker.to_vec());
    }

    /// Closes every new connection at once (`refuse`), or relays again.
    pub fn refuse_new(&self, refuse: bool) {
        self.rule.lock().unwrap().refuse = refuse;
    }

    /// Resets (RST) every connection relayed so far, on both sides, and returns
    /// once that has happened (each pipe checks every 20 ms).
    pub fn reset_all(&self) {
        self.rule.lock().unwrap().generation += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Rule {
    delay: Duration,
    marker: Option<Vec<u8>>,
    /// New connections are closed at once instead of relayed.
    refuse: bool,
    /// Bumped to reset every relayed connection.
    generation: u64,
}

impl Rule {
    fn delay_for(&self, chunk: &[u8]) -> Duration {
        match &self.marker {
            Some(marker) if !chunk.windows(marker.len()).any(|w| w == &marker[..]) => {
                Duration::ZERO
            }
            _ => self.delay,
        }
    }
}

async fn pipe(client: TcpStream, target: SocketAddr, rule: Arc<Mutex<Rule>>) {
    let (refuse, generation) = {
        let rule = rule.lock().unwrap();
        (rule.refuse, rule.generation)
    };
    if refuse {
        let _ = client.set_zero_linger();
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let replies = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = rule.lock().unwrap().delay_for(&buf[..n]);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    let reset = async {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if rule.lock().unwrap().generation != generation {
                return;
            }
        }
    };
    // On reset, both halves are dropped with SO_LINGER 0: each side gets an RST.
    tokio::select! {
        _ = async { tokio::join!(requests, replies) } => {}
        () = reset => {}
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
