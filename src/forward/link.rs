//! One connection to Redis that the proxy speaks RESP on itself, so that
//! replies reach clients as the bytes Redis sent: opened, authenticated, its
//! protocol and database chosen, and tracking turned on when asked.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::frame::{self, Frame, Kind};
use crate::backend::{Manager, RawStream};
use crate::lookup::Error;

/// Whether a link asks Redis to track the keys it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tracking {
    Off,
    /// Invalidations come on the link itself (RESP3).
    Own,
    /// Invalidations go to the connection with this id.
    Redirect(i64),
}

/// A connection to Redis, with what it has read but not yet taken.
pub(crate) struct Link {
    stream: Box<dyn RawStream>,
    input: BytesMut,
    /// Redis's id for the connection (`CLIENT ID`).
    pub(crate) id: i64,
}

/// Writes `args` as a RESP array of bulk strings.
pub(crate) fn encode<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    out.extend_from_slice(b"*");
    out.extend_from_slice(itoa::Buffer::new().format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(b"$");
        out.extend_from_slice(itoa::Buffer::new().format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

impl Link {
    /// Opens a link speaking RESP3 (`resp3`) or RESP2, in database `db` (`None`:
    /// the URL's), within the backend's timeouts.
    pub(crate) async fn open(
        backend: &Manager,
        resp3: bool,
        db: Option<u16>,
        tracking: Tracking,
    ) -> Result<Self, Error> {
        let timeout = backend.response_timeout();
        let open = async {
            let stream = backend.open_raw().await.map_err(Error::from)?;
            let mut link = Link {
                stream,
                input: BytesMut::with_capacity(16 * 1024),
                id: 0,
            };
            let (user, password, url_db) = backend.login();
            let mut handshake = BytesMut::new();
            let mut steps = 0;
            let user = user.unwrap_or_else(|| "default".to_owned());
            if resp3 {
                match &password {
                    Some(password) => {
                        encode(&["HELLO", "3", "AUTH", &user, password], &mut handshake)
                    }
                    None => encode(&["HELLO", "3"], &mut handshake),
                }
                steps += 1;
            } else if let Some(password) = &password {
                encode(&["AUTH", &user, password], &mut handshake);
                steps += 1;
            }
            let db = db.map_or(url_db, i64::from);
            if db != 0 {
                encode(&["SELECT", &db.to_string()], &mut handshake);
                steps += 1;
            }
            encode(&["CLIENT", "ID"], &mut handshake);
            steps += 1;
            match tracking {
                Tracking::Off => {}
                Tracking::Own => {
                    encode(&["CLIENT", "TRACKING", "ON"], &mut handshake);
                    steps += 1;
                }
                Tracking::Redirect(id) => {
                    encode(
                        &["CLIENT", "TRACKING", "ON", "REDIRECT", &id.to_string()],
                        &mut handshake,
                    );
                    steps += 1;
                }
            }
            link.write(&handshake).await?;
            for step in 0..steps {
                let reply = link.read().await?;
                if let Some(error) = reply.error_text() {
                    return Err(Error::unavailable(format!(
                        "redis refused the connection: {error}"
                    )));
                }
                let is_id = step == steps - 1 - usize::from(tracking != Tracking::Off);
                if is_id {
                    link.id = std::str::from_utf8(&reply.bytes[1..reply.bytes.len() - 2])
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                }
            }
            Ok(link)
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(opened) => opened,
            Err(_) => Err(Error::unavailable(format!(
                "no answer to the connection handshake within {} (--request-timeout)",
                humantime::format_duration(timeout)
            ))),
        }
    }

    /// Writes `bytes` whole.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|error| lost(&error.to_string()))
    }

    /// The next reply or push, waiting for it to arrive whole.
    pub(crate) async fn read(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(frame) = self.take()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// A reply already received whole, if there is one.
    pub(crate) fn take(&mut self) -> Result<Option<Frame>, Error> {
        frame::take(&mut self.input).map_err(|error| lost(&format!("unreadable reply: {error}")))
    }

    /// Reads more of what Redis sends.
    pub(crate) async fn fill(&mut self) -> Result<(), Error> {
        if self.input.capacity() - self.input.len() < 4096 {
            self.input.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.input).await {
            Ok(0) => Err(lost("closed by redis")),
            Ok(_) => Ok(()),
            Err(error) => Err(lost(&error.to_string())),
        }
    }

    /// Closes the link, telling Redis first.
    pub(crate) async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// The error of a link that can no longer be used.
pub(crate) fn lost(why: &str) -> Error {
    Error::unavailable(format!("redis connection lost: {why}"))
}

/// A frame that says the link failed, for replies that were waiting on it.
pub(crate) fn is_push(frame: &Frame) -> bool {
    frame.kind == Kind::Push
}
