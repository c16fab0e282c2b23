//! What a Redis Cluster node says when a request is not its to serve, read
//! from the reply: `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`.

use crate::protocol::Frame;

/// Redirections one request follows at most.
pub(crate) const MAX_REDIRECTS: usize = 5;

/// A reply that sends a request elsewhere, or asks it to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// `MOVED slot host:port`: the slot is served there from now on.
    Moved(String),
    /// `ASK slot host:port`: this once, there, after `ASKING`.
    Ask(String),
    /// `TRYAGAIN`: a multi-key request on a slot being migrated; soon over.
    TryAgain,
    /// `CLUSTERDOWN …`: the cluster refuses requests while a slot has no
    /// primary. Not followed: the reply is the answer, and the map is due a
    /// refresh.
    Down,
}

impl Redirect {
    /// What `frame` says, if it is a redirection.
    pub(crate) fn of(frame: &Frame) -> Option<Self> {
        let text = frame.error_text()?;
        Self::parse(&text)
    }

    fn parse(error: &str) -> Option<Self> {
        let mut words = error.split_whitespace();
        match words.next()? {
            "MOVED" => Some(Redirect::Moved(words.nth(1)?.to_owned())),
            "ASK" => Some(Redirect::Ask(words.nth(1)?.to_owned())),
            "TRYAGAIN" => Some(Redirect::TryAgain),
            "CLUSTERDOWN" => Some(Redirect::Down),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_name_their_target() {
        assert_eq!(
            Redirect::parse("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved("127.0.0.1:6381".into()))
        );
        assert_eq!(
            Redirect::parse("ASK 3999 10.0.0.2:7002"),
            Some(Redirect::Ask("10.0.0.2:7002".into()))
        );
        assert_eq!(Redirect::parse("MOVED"), None);
        assert_eq!(
            Redirect::parse("TRYAGAIN Multiple keys request during rehashing of slot"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(
            Redirect::parse("CLUSTERDOWN The cluster is down"),
            Some(Redirect::Down)
        );
        assert_eq!(Redirect::parse("ERR unknown command"), None);
    }
}
