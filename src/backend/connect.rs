//! Opening a [`Link`] to one Redis node: TCP within `--redis-connect-timeout`,
//! TLS for `rediss://`, and the handshake (`HELLO`, `AUTH`, `SELECT`,
//! `READONLY`, `CLIENT TRACKING`, `CLIENT ID`) within `--request-timeout`,
//! each step failing with an error of its own.
//!
//! When Redis accepts a connection only to refuse it (`-ERR max number of
//! clients reached`, then a close), the reason is read on a fresh connection
//! and reported, rather than lost behind the reset that follows. When
//! something other than Redis answers, the error says what it sent.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Error;
use super::link::{Link, RawStream};
use super::url::{Parts, RedisUrl};
use crate::protocol::{Frame, encode};

/// Whether a link asks Redis to track the keys it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tracking {
    Off,
    /// Invalidations come on the link itself (RESP3).
    Own,
    /// Invalidations go to the connection with this id.
    Redirect(i64),
}

/// What a new link is set up for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    /// RESP3 (`HELLO 3`), else RESP2.
    pub(crate) resp3: bool,
    /// The database it selects (`None`: the URL's).
    pub(crate) db: Option<u16>,
    pub(crate) tracking: Tracking,
    /// Whether Redis's id for it is asked (`CLIENT ID`): a tracking
    /// listener's is what redirects name. A client's dedicated connection
    /// sends nothing it did not ask for but its login and database, so that
    /// `MONITOR` through the proxy shows what Redis would.
    pub(crate) identify: bool,
}

/// How long a refused connection is given to say why.
const REFUSAL_WAIT: Duration = Duration::from_millis(200);

/// How to open links to one Redis node. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Connector {
    parts: std::sync::Arc<Parts>,
    addr: String,
    connect_timeout: Duration,
    timeout: Duration,
    tls: Option<crate::tls::ClientTls>,
    /// Links run `READONLY` first (a cluster replica read from).
    readonly: bool,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("readonly", &self.readonly)
            .finish_non_exhaustive()
    }
}

/// The timeouts and TLS every link of a backend shares.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    /// The bound on the handshake and on every reply (`--request-timeout`).
    pub(crate) timeout: Duration,
    pub(crate) tls: Option<crate::tls::ClientTls>,
}

impl Connector {
    /// Links to the node `url` names.
    pub(crate) fn new(url: &RedisUrl, settings: &Settings) -> Self {
        let parts = url.parts();
        Self {
            addr: parts.address(),
            parts: std::sync::Arc::new(parts),
            connect_timeout: settings.connect_timeout,
            timeout: settings.timeout,
            tls: if url.is_tls() {
                settings.tls.clone()
            } else {
                None
            },
            readonly: false,
        }
    }

    /// The same node, its links running `READONLY` first when `readonly`.
    pub(crate) fn readonly(mut self, readonly: bool) -> Self {
        self.readonly = readonly;
        self
    }

    /// `host:port`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The bound on a handshake and on each reply.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The database links select unless told otherwise.
    pub(crate) fn default_db(&self) -> i64 {
        self.parts.db
    }

    /// A link with no handshake at all: the caller speaks first, as a new
    /// client of Redis does (`AUTH` asked for a client: its reply is Redis's
    /// own, whatever the URL's credentials).
    pub(crate) async fn open_bare(&self) -> Result<Link, Error> {
        let (stream, local) = self.connect().await?;
        Ok(Link::new(stream, local))
    }

    /// Opens a link set up as `setup` says.
    ///
    /// # Errors
    ///
    /// The step that failed: connecting, TLS, a refusal, the handshake's
    /// time running out.
    pub(crate) async fn open(&self, setup: Setup) -> Result<Link, Error> {
        let (stream, local) = self.connect().await?;
        let mut link = Link::new(stream, local);
        let handshake = self.handshake(&mut link, setup);
        match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(())) => Ok(link),
            Ok(Err(Error::Lost { .. })) if self.tls.is_none() => {
                // Redis may have accepted the connection only to refuse it (in
                // the clear: a refusal over TLS cannot be read on a new socket).
                Err(match self.probe().await {
                    Some(Probed::Refused(reason)) => Error::Refused(reason),
                    Some(Probed::NotRedis(got)) => Error::NotRedis {
                        addr: self.addr.clone(),
                        got,
                    },
                    None => Error::lost("closed during the connection handshake"),
                })
            }
            Ok(Err(Error::Protocol(_))) => Err(Error::NotRedis {
                addr: self.addr.clone(),
                got: printable(link.unread()),
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Timeout {
                what: "the connection handshake",
                timeout: self.timeout,
            }),
        }
    }

    /// A TCP (and, for `rediss://`, TLS) connection, before any handshake,
    /// and its local address (what Redis lists as the client's `addr`).
    async fn connect(&self) -> Result<(Box<dyn RawStream>, Option<SocketAddr>), Error> {
        let tcp = self.connect_tcp().await?;
        let local = tcp.local_addr().ok();
        let Some(tls) = &self.tls else {
            return Ok((Box::new(tcp), local));
        };
        match tokio::time::timeout(self.timeout, tls.connect(&self.parts.host, tcp)).await {
            Ok(Ok(stream)) => Ok((Box::new(stream), local)),
            Ok(Err(cause)) => Err(Error::Tls {
                addr: self.addr.clone(),
                cause: std::sync::Arc::new(cause),
            }),
            Err(_) => Err(Error::Timeout {
                what: "the TLS handshake",
                timeout: self.timeout,
            }),
        }
    }

    async fn connect_tcp(&self) -> Result<TcpStream, Error> {
        let connect = TcpStream::connect((self.parts.host.as_str(), self.parts.port));
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(cause)) => {
                return Err(Error::Connect {
                    addr: self.addr.clone(),
                    cause: std::sync::Arc::new(cause),
                });
            }
            Err(_) => {
                return Err(Error::ConnectTimeout {
                    addr: self.addr.clone(),
                    timeout: self.connect_timeout,
                });
            }
        };
        // Requests are small and pipelined already: send them without delay.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends every handshake step at once and reads their replies in order.
    async fn handshake(&self, link: &mut Link, setup: Setup) -> Result<(), Error> {
        let parts = &self.parts;
        let user = parts.user.as_deref().unwrap_or("default");
        let mut out = BytesMut::new();
        let mut steps = Vec::new();
        match (&parts.password, setup.resp3) {
            (Some(password), true) => encode(&["HELLO", "3", "AUTH", user, password], &mut out),
            (None, true) => encode(&["HELLO", "3"], &mut out),
            (Some(password), false) => encode(&["AUTH", user, password], &mut out),
            (None, false) => {}
        }
        if setup.resp3 || parts.password.is_some() {
            steps.push(Step::Login);
        }
        let db = setup.db.map_or(parts.db, i64::from);
        if db != 0 {
            encode(&["SELECT", &db.to_string()], &mut out);
            steps.push(Step::Other);
        }
        if self.readonly {
            encode(&["READONLY"], &mut out);
            steps.push(Step::Other);
        }
        match setup.tracking {
            Tracking::Off => {}
            Tracking::Own => encode(&["CLIENT", "TRACKING", "ON"], &mut out),
            Tracking::Redirect(id) => encode(
                &["CLIENT", "TRACKING", "ON", "REDIRECT", &id.to_string()],
                &mut out,
            ),
        }
        if setup.tracking != Tracking::Off {
            steps.push(Step::Other);
        }
        if setup.identify {
            encode(&["CLIENT", "ID"], &mut out);
            steps.push(Step::Id);
        }
        if out.is_empty() {
            return Ok(());
        }
        link.write(&out).await?;
        for step in steps {
            let reply = link.read().await?;
            if let Some(error) = reply.error_text() {
                return Err(Error::Refused(error));
            }
            if step == Step::Id {
                link.id = integer(&reply).unwrap_or(0);
            }
        }
        Ok(())
    }

    /// Why a connection closed during its handshake, asked of a new one: a
    /// Redis that refuses clients says so as soon as it accepts, and a server
    /// that is not Redis answers a `PING` in its own way.
    async fn probe(&self) -> Option<Probed> {
        let mut probe = self.connect_tcp().await.ok()?;
        // A refusing Redis may have closed already; its reason is still read.
        let _ = probe.write_all(b"PING\r\n").await;
        let mut line = [0u8; 256];
        let n = tokio::time::timeout(REFUSAL_WAIT, probe.read(&mut line))
            .await
            .ok()?
            .ok()?;
        let got = line.get(..n).filter(|got| !got.is_empty())?;
        if !matches!(got[0], b'-' | b'+' | b'$' | b'*' | b'%' | b':' | b'_') {
            return Some(Probed::NotRedis(printable(got)));
        }
        let text = std::str::from_utf8(got).ok()?;
        let reason = text.strip_prefix('-')?.lines().next()?.trim();
        let reason = reason.strip_prefix("ERR ").unwrap_or(reason);
        (!reason.is_empty()).then(|| Probed::Refused(reason.to_owned()))
    }
}

/// What a probe of a server that closed a handshake found.
enum Probed {
    /// Redis refused the connection, for this reason (`max number of clients reached`).
    Refused(String),
    /// The server is not Redis: the start of what it sent.
    NotRedis(String),
}

/// One step of a handshake, by what its reply tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `HELLO` or `AUTH`.
    Login,
    /// `CLIENT ID`: the link's id.
    Id,
    Other,
}

/// The integer of a `:n` reply.
fn integer(frame: &Frame) -> Option<i64> {
    let text = frame.bytes.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The first line of `bytes`, printable and short: what a server that is not
/// Redis answered.
fn printable(bytes: &[u8]) -> String {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = &line[..line.len().min(60)];
    String::from_utf8_lossy(line)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_stranger_sent_is_shown_on_one_line() {
        assert_eq!(
            printable(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"),
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(printable(&[0x16, 0x03, b'x']), "x");
    }

    #[test]
    fn an_id_is_read_from_an_integer_reply() {
        assert_eq!(
            integer(&Frame::new(bytes::Bytes::from(":42\r\n"))),
            Some(42)
        );
        assert_eq!(integer(&Frame::new(bytes::Bytes::from("+OK\r\n"))), None);
    }
}
