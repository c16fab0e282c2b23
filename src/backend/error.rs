//! Why Redis could not be asked or did not answer, typed by the step that
//! failed, each with its cause for the log.
//!
//! Clients see a short text (`Display`); the stack's [`crate::Error`] is made
//! from these at this layer's edge, so that running out of time is always a
//! timeout (504, `-ERR timed out`) whatever step it happened in, an error
//! reply of Redis's is passed on as it is, and everything else is
//! "unavailable" (502) with the cause kept as the error's source.

use std::sync::Arc;
use std::time::Duration;

/// The connection layer's error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}: {cause}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The operating system's reason.
        #[source]
        cause: Arc<std::io::Error>,
    },
    /// The TCP connection was not opened within `--redis-connect-timeout`.
    #[error(
        "no TCP connection to {addr} within {} (--redis-connect-timeout)",
        humantime::format_duration(*timeout)
    )]
    ConnectTimeout {
        /// `host:port`.
        addr: String,
        /// The bound that passed.
        timeout: Duration,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {addr} failed: {cause}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// rustls's reason.
        #[source]
        cause: Arc<std::io::Error>,
    },
    /// Redis refused the connection: it said why (`max number of clients
    /// reached`, `WRONGPASS …`), or closed it.
    #[error("redis refused the connection: {0}")]
    Refused(String),
    /// Something that is not Redis answered at the address.
    #[error("{addr} did not answer as Redis: got `{got}`")]
    NotRedis {
        /// `host:port`.
        addr: String,
        /// The start of what it sent, printable.
        got: String,
    },
    /// A step did not finish within the request timeout: the handshake
    /// (`what` names it), or a reply.
    #[error(
        "no answer to {what} from redis within {} (--request-timeout)",
        humantime::format_duration(*timeout)
    )]
    Timeout {
        /// What went unanswered: "the connection handshake", "a request".
        what: &'static str,
        /// The bound that passed.
        timeout: Duration,
    },
    /// The connection broke, or Redis closed it, before the reply.
    #[error("redis connection lost: {reason}")]
    Lost {
        /// What happened.
        reason: Arc<str>,
        /// The operating system's reason, when there is one.
        #[source]
        cause: Option<Arc<std::io::Error>>,
    },
    /// Redis sent bytes that are not RESP.
    #[error("unreadable reply from redis: {0}")]
    Protocol(&'static str),
    /// Redis answered with an error reply, such as `WRONGTYPE …`: the
    /// request, not Redis, is at fault. Code first, as Redis wrote it.
    #[error("{0}")]
    Reply(Arc<str>),
    /// The topology has no node for the request: no slot map yet, a slot no
    /// primary serves, `CLUSTERDOWN`, too many redirections.
    #[error("redis cluster: {0}")]
    Cluster(Arc<str>),
    /// The node's requests fail at once for now: its last requests failed
    /// (see `circuit`).
    #[error(
        "{reason}; redis node {addr} is short-circuited, next try in {}",
        humantime::format_duration(Duration::from_millis(retry_in.as_millis() as u64))
    )]
    ShortCircuited {
        /// `host:port`.
        addr: String,
        /// Why it opened.
        reason: Arc<str>,
        /// How long until the next trial request may go.
        retry_in: Duration,
    },
    /// No primary is known (Sentinel): none answered, or none is a master.
    #[error("redis sentinel: {0}")]
    NoPrimary(Arc<str>),
    /// Every server of a sharded pool is ejected (twemproxy's
    /// `auto_eject_hosts`), none back yet.
    #[error("redis pool: {0}")]
    Ejected(Arc<str>),
    /// The proxy is stopping.
    #[error("the proxy is stopping")]
    Stopping,
}

impl Error {
    /// A connection that broke for `reason`.
    pub(crate) fn lost(reason: impl Into<Arc<str>>) -> Self {
        Error::Lost {
            reason: reason.into(),
            cause: None,
        }
    }

    /// A connection that broke with an I/O error.
    pub(crate) fn io(error: std::io::Error) -> Self {
        Error::Lost {
            reason: error.to_string().into(),
            cause: Some(Arc::new(error)),
        }
    }

    /// Whether Redis refused because the key holds a value that is not a
    /// string (`WRONGTYPE`): the client's problem, not the backend's.
    pub(crate) fn is_wrong_type(&self) -> bool {
        matches!(self, Error::Reply(reply) if reply.starts_with("WRONGTYPE"))
    }
}

impl From<Error> for crate::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Timeout { .. } => crate::Error::Timeout,
            Error::Reply(reply) => crate::Error::Reply(reply),
            other => crate::Error::Unavailable {
                message: format!("redis unavailable: {other}").into(),
                cause: Some(Arc::new(other)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_time_in_any_step_is_a_timeout_and_the_cause_is_kept() {
        let handshake = Error::Timeout {
            what: "the connection handshake",
            timeout: Duration::from_millis(300),
        };
        assert!(handshake.to_string().contains("(--request-timeout)"));
        assert!(matches!(
            crate::Error::from(handshake),
            crate::Error::Timeout
        ));
        let refused = crate::Error::from(Error::Refused("max number of clients reached".into()));
        assert_eq!(
            refused.to_string(),
            "redis unavailable: redis refused the connection: max number of clients reached"
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let connect = crate::Error::from(Error::Connect {
            addr: "127.0.0.1:1".into(),
            cause: Arc::new(io),
        });
        let source = std::error::Error::source(&connect).expect("the connection error");
        let io = std::error::Error::source(source).expect("the operating system's");
        assert_eq!(io.to_string(), "refused");
        assert!(matches!(
            crate::Error::from(Error::Reply("WRONGTYPE x".into())),
            crate::Error::Reply(_)
        ));
    }
}
