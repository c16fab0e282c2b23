//! Turning a request's arguments into a [`Command`].
//!
//! Only reads reach the service stack (`GET`, `MGET`). The connection-level
//! commands that client libraries send while connecting are answered here, as
//! Redis would. Every other command, writes included, is refused with an error
//! that names it; nothing is ever forwarded to the backing Redis.

use bytes::Bytes;

use crate::protocol::Reply;

/// One parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `GET key`
    Get(Bytes),
    /// `MGET key [key ...]`
    MGet(Vec<Bytes>),
    /// `PING [message]`
    Ping(Option<Bytes>),
    /// `ECHO message`
    Echo(Bytes),
    /// `QUIT`: reply `+OK`, then close.
    Quit,
    /// `RESET`: back to RESP2, no name.
    Reset,
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`
    Hello {
        /// The protocol asked for, if any.
        protover: Option<Bytes>,
        /// Credentials to authenticate with first.
        auth: Option<Credentials>,
        /// A connection name to set.
        setname: Option<Bytes>,
    },
    /// `AUTH [user] password` (no user: `default`).
    Auth(Credentials),
    /// `SELECT index`
    Select(Bytes),
    /// `CLIENT subcommand ...`
    Client(Vec<Bytes>),
    /// `COMMAND [subcommand ...]`
    Describe(Vec<Bytes>),
    /// `INFO [section ...]`
    Info(Vec<Bytes>),
    /// A request that is answered with this error.
    Refused(Reply),
    /// In transparent mode: a command for the backing Redis, name first.
    Forward(Vec<Bytes>),
}

/// A user name and password sent with `AUTH` or `HELLO … AUTH`. `Debug` leaves
/// the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name.
    pub user: Bytes,
    /// The password.
    pub password: Bytes,
    /// Whether the client named the user (`AUTH user password`) or not
    /// (`AUTH password`, the user `default`).
    pub named: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// Which command a [`Spec`] describes, to parse its arguments by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    MGet,
    Ping,
    Echo,
    Quit,
    Reset,
    Hello,
    Auth,
    Select,
    Client,
    Command,
    Info,
}

/// One supported command, described as Redis's `COMMAND INFO` describes it.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    kind: Kind,
    /// Lower-case name.
    pub name: &'static str,
    /// Number of arguments including the name; negative means "at least".
    pub arity: i64,
    /// Command flags such as `readonly`.
    pub flags: &'static [&'static str],
    /// Position of the first key (0: none).
    pub first_key: i64,
    /// Position of the last key (-1: the last argument).
    pub last_key: i64,
    /// Step between keys.
    pub step: i64,
    /// One line for `COMMAND DOCS`.
    pub summary: &'static str,
}

const fn spec(
    kind: Kind,
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    summary: &'static str,
) -> Spec {
    Spec {
        kind,
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        summary,
    }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);

/// Every command the proxy answers.
pub const SUPPORTED: &[Spec] = &[
    spec(
        Kind::Get,
        "get",
        2,
        &["readonly", "fast"],
        (1, 1, 1),
        "Returns the string value of a key, from the proxy's cache or Redis.",
    ),
    spec(
        Kind::MGet,
        "mget",
        -2,
        &["readonly", "fast"],
        (1, -1, 1),
        "Returns the string values of one or more keys.",
    ),
    spec(
        Kind::Ping,
        "ping",
        -1,
        &["fast"],
        NO_KEYS,
        "Returns PONG, or the message given.",
    ),
    spec(
        Kind::Echo,
        "echo",
        2,
        &["fast"],
        NO_KEYS,
        "Returns the given string.",
    ),
    spec(
        Kind::Quit,
        "quit",
        -1,
        &["fast"],
        NO_KEYS,
        "Closes the connection.",
    ),
    spec(
        Kind::Reset,
        "reset",
        1,
        &["fast"],
        NO_KEYS,
        "Resets the connection to RESP2 without a name.",
    ),
    spec(
        Kind::Hello,
        "hello",
        -1,
        &["fast"],
        NO_KEYS,
        "Handshakes and switches the protocol version.",
    ),
    spec(
        Kind::Auth,
        "auth",
        -2,
        &["fast"],
        NO_KEYS,
        "Authenticates the connection (accepted as is when no password or users are configured).",
    ),
    spec(
        Kind::Select,
        "select",
        2,
        &["fast"],
        NO_KEYS,
        "Selects the database; only 0 exists.",
    ),
    spec(
        Kind::Client,
        "client",
        -2,
        &[],
        NO_KEYS,
        "Connection name and identity (SETNAME, GETNAME, ID, SETINFO, INFO).",
    ),
    spec(
        Kind::Command,
        "command",
        -1,
        &[],
        NO_KEYS,
        "Describes the supported commands.",
    ),
    spec(
        Kind::Info,
        "info",
        -1,
        &[],
        NO_KEYS,
        "Returns information and statistics about the proxy.",
    ),
];

/// The supported command called `name`, in any case.
pub fn find(name: &[u8]) -> Option<&'static Spec> {
    SUPPORTED
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

impl Command {
    /// Parses a request; `args` is not empty (the decoder skips empty requests).
    /// The arguments are moved into the command, not copied. With `forward`
    /// (transparent mode), a command the proxy does not answer itself, and
    /// `COMMAND` (the backend's table is the one that describes what a client
    /// may send), is for the backend.
    pub fn parse(mut args: Vec<Bytes>, forward: bool) -> Command {
        // The read path first: a GET costs one comparison.
        if args.len() == 2 && args[0].eq_ignore_ascii_case(b"get") {
            return Command::Get(args.pop().expect("two arguments"));
        }
        let spec = find(&args[0]);
        if forward && spec.is_none_or(|spec| spec.kind == Kind::Command) {
            return Command::Forward(args);
        }
        let Some(spec) = spec else {
            return Command::Refused(unsupported(&args));
        };
        let n = args.len() as i64;
        if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
            return wrong_arity(spec.name);
        }
        // Drop the name: what is left are the arguments.
        args.remove(0);
        let first = |args: Vec<Bytes>| args.into_iter().next();
        match spec.kind {
            Kind::Get => Command::Get(args.pop().expect("arity 2")),
            Kind::MGet => Command::MGet(args),
            Kind::Ping if n > 2 => wrong_arity("ping"),
            Kind::Ping => Command::Ping(first(args)),
            Kind::Echo => Command::Echo(first(args).expect("arity 2")),
            Kind::Quit => Command::Quit,
            Kind::Reset => Command::Reset,
            Kind::Hello => parse_hello(args),
            Kind::Auth if n > 3 => Command::Refused(Reply::error("ERR syntax error")),
            Kind::Auth => {
                let password = args.pop().expect("arity -2");
                let named = !args.is_empty();
                let user = args.pop().unwrap_or_else(|| Bytes::from_static(b"default"));
                Command::Auth(Credentials {
                    user,
                    password,
                    named,
                })
            }
            Kind::Select => Command::Select(first(args).expect("arity 2")),
            Kind::Client => Command::Client(args),
            Kind::Command => Command::Describe(args),
            Kind::Info => Command::Info(args),
        }
    }
}

fn wrong_arity(name: &str) -> Command {
    Command::Refused(Reply::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    )))
}

fn parse_hello(args: Vec<Bytes>) -> Command {
    let mut args = args.into_iter();
    let protover = args.next();
    let (mut auth, mut setname) = (None, None);
    while let Some(option) = args.next() {
        match &option.to_ascii_lowercase()[..] {
            b"auth" => match (args.next(), args.next()) {
                (Some(user), Some(password)) => {
                    auth = Some(Credentials {
                        user,
                        password,
                        named: true,
                    })
                }
                _ => {
                    return Command::Refused(Reply::error(
                        "ERR Syntax error in HELLO option 'auth'",
                    ));
                }
            },
            b"setname" => match args.next() {
                Some(name) => setname = Some(name),
                None => {
                    return Command::Refused(Reply::error(
                        "ERR Syntax error in HELLO option 'setname'",
                    ));
                }
            },
            _ => {
                return Command::Refused(Reply::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    printable(&option)
                )));
            }
        }
    }
    Command::Hello {
        protover,
        auth,
        setname,
    }
}

/// The error for any command the proxy does not serve.
fn unsupported(args: &[Bytes]) -> Reply {
    let beginning: Vec<String> = args[1..]
        .iter()
        .take(3)
        .map(|a| format!("'{}'", printable(a)))
        .collect();
    Reply::error(format!(
        "ERR unknown or unsupported command '{}', with args beginning with: {}; \
         redis-proxy serves reads only (GET, MGET)",
        printable(&args[0]),
        beginning.join(" ")
    ))
}

/// At most 64 characters of `bytes`, lossily as UTF-8, for error messages.
pub fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut short: String = text.chars().take(64).collect();
    if text.chars().count() > 64 {
        short.push_str("...");
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Command {
        Command::parse(
            words
                .iter()
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect(),
            false,
        )
    }

    #[test]
    fn reads_are_parsed_case_insensitively() {
        assert_eq!(parse(&["get", "k"]), Command::Get(Bytes::from("k")));
        assert_eq!(parse(&["GeT", "k"]), Command::Get(Bytes::from("k")));
        assert_eq!(
            parse(&["MGET", "a", "b"]),
            Command::MGet(vec![Bytes::from("a"), Bytes::from("b")])
        );
    }

    #[test]
    fn wrong_arity_names_the_command() {
        let Command::Refused(Reply::Error(e)) = parse(&["GET"]) else {
            panic!("GET without a key must be refused");
        };
        assert_eq!(e, "ERR wrong number of arguments for 'get' command");
        assert!(matches!(parse(&["GET", "a", "b"]), Command::Refused(_)));
        assert!(matches!(parse(&["MGET"]), Command::Refused(_)));
        assert!(matches!(parse(&["PING", "a", "b"]), Command::Refused(_)));
    }

    #[test]
    fn writes_are_refused_naming_the_command() {
        let Command::Refused(Reply::Error(e)) = parse(&["SET", "k", "v"]) else {
            panic!("SET must be refused");
        };
        assert!(
            e.starts_with("ERR unknown or unsupported command 'SET'"),
            "{e}"
        );
        assert!(e.contains("'k' 'v'"), "{e}");
    }

    #[test]
    fn in_transparent_mode_what_the_proxy_does_not_answer_is_forwarded() {
        let forwarded = |words: &[&str]| {
            Command::parse(
                words
                    .iter()
                    .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                    .collect(),
                true,
            )
        };
        assert!(matches!(forwarded(&["SET", "k", "v"]), Command::Forward(_)));
        assert!(matches!(
            forwarded(&["COMMAND", "DOCS"]),
            Command::Forward(_)
        ));
        assert!(matches!(forwarded(&["NOSUCH"]), Command::Forward(_)));
        assert_eq!(forwarded(&["GET", "k"]), Command::Get(Bytes::from("k")));
        assert!(matches!(forwarded(&["PING"]), Command::Ping(None)));
    }

    #[test]
    fn auth_names_default_without_a_user_and_hides_the_password() {
        let Command::Auth(credentials) = parse(&["AUTH", "pw"]) else {
            panic!("AUTH parses");
        };
        assert_eq!(credentials.user, Bytes::from("default"));
        assert_eq!(credentials.password, Bytes::from("pw"));
        let Command::Auth(credentials) = parse(&["auth", "app", "s3cret"]) else {
            panic!("AUTH parses");
        };
        assert_eq!(credentials.user, Bytes::from("app"));
        assert!(!format!("{credentials:?}").contains("s3cret"));
        assert!(matches!(
            parse(&["AUTH", "a", "b", "c"]),
            Command::Refused(_)
        ));
    }

    #[test]
    fn hello_options_are_parsed() {
        assert_eq!(
            parse(&["HELLO", "3", "AUTH", "u", "p", "SETNAME", "n"]),
            Command::Hello {
                protover: Some(Bytes::from("3")),
                auth: Some(Credentials {
                    named: true,
                    user: Bytes::from("u"),
                    password: Bytes::from("p"),
                }),
                setname: Some(Bytes::from("n")),
            }
        );
        assert!(matches!(
            parse(&["HELLO", "3", "AUTH", "u"]),
            Command::Refused(_)
        ));
        assert!(matches!(
            parse(&["HELLO", "3", "BOGUS"]),
            Command::Refused(_)
        ));
    }
}
