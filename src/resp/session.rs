//! What one connection knows about itself, and the commands that only concern
//! it: `HELLO`, `AUTH`, `SELECT`, `CLIENT`, `COMMAND`, `RESET`, `PING`, `ECHO`,
//! `QUIT`, `INFO`. Reads become keys for the stack; everything else is answered
//! here, in order with the reads around it (see [`Planned`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::command::{self, Command, Credentials, SUPPORTED, Spec, printable};
use super::{Databases, Resp};
use crate::protocol::{Protocol, Reply};

use crate::auth::{Front, User};
use crate::forward::{Forwarding, Route};
use crate::lookup::{Key, Query, Request, Target};
use crate::protocol::encoded;

/// The version `HELLO` and `INFO` report: the Redis command set the proxy follows.
pub const REDIS_VERSION: &str = "7.0.0";

/// A request of the current batch, waiting for its reply to be encoded.
#[derive(Debug)]
pub(super) enum Planned {
    /// Answered already.
    Reply(Reply, Protocol),
    /// The next result answers it.
    Get(Protocol),
    /// The next `n` results answer it.
    MGet(usize, Protocol),
    /// `SELECT` of a database not known yet: the backend is asked before the
    /// connection goes on, since every request after it reads that database.
    Select(u16),
    /// Transparent mode: the next result is a reply as Redis sent it (a
    /// cached read's, or a forwarded command's).
    Relay,
    /// Transparent mode: a command that starts a state (`MULTI`, `SUBSCRIBE`,
    /// a blocking read): it and what follows go to a connection of this
    /// client's own.
    Dedicate(Vec<Bytes>),
    /// Transparent mode: `INFO`, Redis's reply with this text (the proxy's
    /// section) appended.
    RelayAppended(String),
    /// Transparent mode without proxy users: `AUTH`, answered by Redis on a
    /// connection of its own.
    Auth(Credentials),
}

/// What one connection knows about itself.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    pub(super) protocol: Protocol,
    name: Option<Bytes>,
    /// The database the connection reads: `None` for the backend's own.
    db: Option<u16>,
    /// What the client said of itself with `CLIENT SETINFO`.
    library: (Option<Bytes>, Option<Bytes>),
    started: Instant,
    /// Who the client is: `None` until it authenticates, when it must.
    user: Option<Arc<User>>,
    /// Cancelled to end the connection: when its user is revoked by a
    /// reload, or once it ends.
    closing: CancellationToken,
}

/// The reply to a command sent before authenticating.
pub(super) const NOAUTH: &str = "NOAUTH Authentication required.";
/// The reply to wrong credentials, or those of a disabled user.
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// The reply to a read of a key outside the user's patterns.
const NOPERM: &str = "NOPERM No permissions to access a key";

impl Session {
    /// A new connection's session, as `user` (`None`: not authenticated yet).
    pub(super) fn new(
        id: u64,
        (peer, local): (SocketAddr, SocketAddr),
        user: Option<Arc<User>>,
        closing: CancellationToken,
    ) -> Self {
        Self {
            id,
            peer,
            local,
            protocol: Protocol::Resp2,
            name: None,
            db: None,
            library: (None, None),
            started: Instant::now(),
            user,
            closing,
        }
    }

    /// Turns a request into its plan: what the stack is asked goes to
    /// `requests` (one per key of a read).
    pub(super) fn plan<S>(
        &mut self,
        command: Command,
        requests: &mut VecDeque<Request>,
        resp: &Resp<S>,
    ) -> Planned {
        let Some(user) = &self.user else {
            return Planned::Reply(self.unauthenticated(command, resp), self.protocol);
        };
        let reply = match command {
            Command::Get(name) if user.may_read(&name) => {
                requests.push_back(Request::Get(Key::in_db(self.db, name)));
                return Planned::Get(self.protocol);
            }
            Command::MGet(names) if user.may_read_all(names.iter().map(|n| &n[..])) => {
                let n = names.len();
                requests.extend(
                    names
                        .into_iter()
                        .map(|name| Request::Get(Key::in_db(self.db, name))),
                );
                return Planned::MGet(n, self.protocol);
            }
            Command::Get(_) | Command::MGet(_) => Reply::error(NOPERM),
            Command::Ping(None) => Reply::Simple("PONG"),
            Command::Ping(Some(message)) | Command::Echo(message) => Reply::Bulk(message),
            Command::Quit => Reply::OK,
            Command::Reset => self.reset(resp),
            Command::Hello {
                protover,
                auth,
                setname,
            } => self.hello(protover, auth, setname, resp),
            Command::Auth(credentials) if resp.forwarding.is_some() && !resp.access.required() => {
                return Planned::Auth(credentials);
            }
            Command::Auth(credentials) => self.auth(&credentials, resp),
            Command::Select(index) => match resp.databases.parse(&index) {
                Ok(db) => match resp.databases.known(db) {
                    Some(Ok(db)) => {
                        self.db = db;
                        Reply::OK
                    }
                    Some(Err(reply)) => reply,
                    None => return Planned::Select(db.expect("only other databases are unknown")),
                },
                Err(reply) => reply,
            },
            Command::Client(args) => self.client(args, &resp.databases),
            Command::Describe(args) => command_info(args),
            Command::Info(sections) if resp.forwarding.is_some() => {
                return self.forward_info(sections, requests, resp);
            }
            Command::Info(sections) => Reply::text(resp.info.text(&sections)),
            Command::Refused(reply) => reply,
            Command::Forward(args) => return self.forward(args, requests, resp),
        };
        Planned::Reply(reply, self.protocol)
    }

    /// Transparent mode's `INFO`: Redis's own, from the node that serves no
    /// key in particular, with the proxy's section appended; `INFO proxy`
    /// is that section alone.
    fn forward_info<S>(
        &mut self,
        sections: Vec<Bytes>,
        requests: &mut VecDeque<Request>,
        resp: &Resp<S>,
    ) -> Planned {
        let is = |section: &Bytes, names: &[&str]| {
            names
                .iter()
                .any(|name| section.eq_ignore_ascii_case(name.as_bytes()))
        };
        let with_proxy = sections.is_empty()
            || sections
                .iter()
                .any(|s| is(s, &["proxy", "all", "everything", "default"]));
        let others: Vec<Bytes> = (sections.iter())
            .filter(|s| !is(s, &["proxy"]))
            .cloned()
            .collect();
        let from =
            (resp.forwarding.as_ref()).and_then(|forwarding| forwarding.backend().any_node());
        if !sections.is_empty() && others.is_empty() {
            let section = resp.info.proxy_section(from.as_deref());
            return Planned::Reply(Reply::text(section), self.protocol);
        }
        let args = std::iter::once(Bytes::from_static(b"INFO"))
            .chain(others)
            .collect();
        match self.forward(args, requests, resp) {
            Planned::Relay if with_proxy => {
                Planned::RelayAppended(resp.info.proxy_section(from.as_deref()))
            }
            planned => planned,
        }
    }

    /// Transparent mode: where a command for the backend goes.
    fn forward<S>(
        &mut self,
        mut args: Vec<Bytes>,
        requests: &mut VecDeque<Request>,
        resp: &Resp<S>,
    ) -> Planned {
        let (Some(forwarding), Some(user)) = (&resp.forwarding, &self.user) else {
            return Planned::Reply(Reply::error("ERR transparent mode is off"), self.protocol);
        };
        if forwarding.table().is_none() {
            return Planned::Reply(
                Reply::error(
                    "ERR redis unavailable: the backend's command table could not be read",
                ),
                self.protocol,
            );
        }
        let resp3 = self.protocol == Protocol::Resp3;
        let route = forwarding.route(&args, user);
        let path = match &route {
            Route::Refuse(_) => "refused",
            Route::Dedicate => "dedicated",
            Route::Cached => "cached",
            Route::Forward {
                target: Target::Slot(_),
                ..
            } => "shared",
            Route::Forward {
                target: Target::Everywhere(_),
                ..
            } => "everywhere",
            Route::Forward {
                target: Target::Scan(_),
                ..
            } => "scan",
            Route::Forward {
                target: Target::Split(..),
                ..
            } => "split",
        };
        let known = forwarding
            .table()
            .is_some_and(|table| table.get(&args[0]).is_some());
        crate::metrics::record_forwarded(&args[0], known, path);
        let resetstat = args.len() == 2
            && args[0].eq_ignore_ascii_case(b"config")
            && args[1].eq_ignore_ascii_case(b"resetstat");
        if resetstat && matches!(route, Route::Forward { .. }) {
            // Redis's counters, and the proxy's in INFO, from zero again.
            resp.info.reset();
        }
        match route {
            Route::Refuse(error) => Planned::Reply(Reply::error(error), self.protocol),
            Route::Dedicate => Planned::Dedicate(args),
            Route::Cached => {
                // One entry whatever the case the client wrote the name in.
                args[0] = Bytes::from(args[0].to_ascii_uppercase());
                let query = Query::new(self.db, resp3, args[1].clone(), encoded(&args));
                requests.push_back(Request::Query(query));
                Planned::Relay
            }
            Route::Forward {
                target,
                writes,
                read_only,
            } => {
                let command = Forwarding::command(&args, self.db, resp3, target, writes, read_only);
                requests.push_back(Request::Command(command));
                Planned::Relay
            }
        }
    }

    /// The database the connection reads (`None`: the backend's own).
    pub(super) fn db(&self) -> Option<u16> {
        self.db
    }

    /// Whether the connection has authenticated (or need not).
    pub(super) fn user(&self) -> Option<&Arc<User>> {
        self.user.as_ref()
    }

    /// What a client that has not authenticated may do: authenticate, say
    /// hello, leave, reset. Errors of the request itself (an unknown command, a
    /// wrong number of arguments) come first, as with Redis.
    fn unauthenticated<S>(&mut self, command: Command, resp: &Resp<S>) -> Reply {
        match command {
            Command::Auth(credentials) => self.auth(&credentials, resp),
            Command::Hello {
                protover,
                auth,
                setname,
            } => self.hello(protover, auth, setname, resp),
            Command::Quit => Reply::OK,
            Command::Reset => self.reset(resp),
            Command::Refused(reply) => reply,
            _ => Reply::error(NOAUTH),
        }
    }

    /// `AUTH`: with authentication off, accepted as is; else the connection
    /// becomes the user, or stays as it was on wrong credentials.
    fn auth<S>(&mut self, credentials: &Credentials, resp: &Resp<S>) -> Reply {
        if !resp.access.required() {
            return Reply::OK;
        }
        match resp.access.authenticate(
            Front::Resp,
            self.peer,
            &credentials.user,
            &credentials.password,
        ) {
            Some(user) => {
                // A reload that revokes the user ends the connection.
                let (revoked, closing) = (user.revoked().clone(), self.closing.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = revoked.cancelled() => closing.cancel(),
                        () = closing.cancelled() => {}
                    }
                });
                self.user = Some(user);
                Reply::OK
            }
            None => Reply::error(WRONGPASS),
        }
    }

    /// `RESET`: RESP2, no name, the URL's database, and not authenticated.
    pub(super) fn reset<S>(&mut self, resp: &Resp<S>) -> Reply {
        self.protocol = Protocol::Resp2;
        self.name = None;
        self.db = None;
        self.user = resp.access.initial();
        Reply::Simple("RESET")
    }

    /// Switches to database `db`, which the backend has confirmed.
    pub(super) fn select(&mut self, db: Option<u16>) {
        self.db = db;
    }

    fn hello<S>(
        &mut self,
        protover: Option<Bytes>,
        auth: Option<Credentials>,
        setname: Option<Bytes>,
        resp: &Resp<S>,
    ) -> Reply {
        // Validate everything before changing anything, as Redis does.
        let protocol = match protover {
            None => self.protocol,
            Some(version) => match std::str::from_utf8(&version)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
                None => {
                    return Reply::error("ERR Protocol version is not an integer or out of range");
                }
            },
        };
        if let Some(credentials) = auth {
            let reply = self.auth(&credentials, resp);
            if reply != Reply::OK {
                return reply;
            }
        }
        if let Some(Err(reply)) = setname.map(|name| self.set_name(name)) {
            return reply;
        }
        self.protocol = protocol;
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("redis")),
            (Reply::text("version"), Reply::text(REDIS_VERSION)),
            (Reply::text("proto"), Reply::Integer(self.protover())),
            (Reply::text("id"), Reply::Integer(self.id as i64)),
            (Reply::text("mode"), Reply::text("standalone")),
            (Reply::text("role"), Reply::text("master")),
            (Reply::text("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn protover(&self) -> i64 {
        match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }

    fn set_name(&mut self, name: Bytes) -> Result<(), Reply> {
        if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
            return Err(Reply::error(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        self.name = (!name.is_empty()).then_some(name);
        Ok(())
    }

    fn client(&mut self, args: Vec<Bytes>, databases: &Databases) -> Reply {
        let sub = args[0].to_ascii_lowercase();
        match (&sub[..], args.len()) {
            (b"setname", 2) => match self.set_name(args[1].clone()) {
                Ok(()) => Reply::OK,
                Err(reply) => reply,
            },
            (b"getname", 1) => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            (b"id", 1) => Reply::Integer(self.id as i64),
            (b"setinfo", 3) => {
                match &args[1].to_ascii_lowercase()[..] {
                    b"lib-name" => self.library.0 = Some(args[2].clone()),
                    b"lib-ver" => self.library.1 = Some(args[2].clone()),
                    _ => {
                        return Reply::error(format!(
                            "ERR Unrecognized option '{}'",
                            printable(&args[1])
                        ));
                    }
                }
                Reply::OK
            }
            (b"info", 1) => Reply::text(self.info_line(databases)),
            // The proxy never evicts or times out a client connection for its
            // memory, and its reads do not touch keys' access times on the
            // client's behalf: both are accepted as already in force.
            (b"no-evict" | b"no-touch", 2)
                if args[1].eq_ignore_ascii_case(b"on") || args[1].eq_ignore_ascii_case(b"off") =>
            {
                Reply::OK
            }
            (b"setname" | b"getname" | b"id" | b"setinfo" | b"info", _) => Reply::error(format!(
                "ERR wrong number of arguments for 'client|{}' command",
                printable(&sub)
            )),
            _ => Reply::error(format!(
                "ERR unknown subcommand '{}'. redis-proxy supports CLIENT SETNAME, GETNAME, ID, SETINFO, INFO, NO-EVICT, NO-TOUCH",
                printable(&args[0])
            )),
        }
    }

    /// The line `CLIENT INFO` answers, with every field Redis 7 writes, so that
    /// clients that parse it (valkey-py's `client_info()`, for one) find them.
    /// Buffer and memory figures the proxy does not keep per connection are 0.
    fn info_line(&self, databases: &Databases) -> String {
        let text = |bytes: &Option<Bytes>| {
            bytes
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned()
        };
        let age = self.started.elapsed().as_secs();
        format!(
            "id={id} addr={peer} laddr={local} fd=-1 name={name} age={age} idle=0 flags=N \
             db={db} sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 \
             rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user={user} \
             redir=-1 resp={resp} lib-name={lib} lib-ver={ver}\n",
            id = self.id,
            peer = self.peer,
            local = self.local,
            name = text(&self.name),
            db = databases.index(self.db),
            resp = self.protover(),
            user = self.user.as_ref().map_or("default", |user| user.name()),
            lib = text(&self.library.0),
            ver = text(&self.library.1),
        )
    }
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name…`, `COMMAND DOCS [name…]`.
fn command_info(args: Vec<Bytes>) -> Reply {
    let info = |spec: &Spec| {
        Reply::Array(vec![
            Reply::text(spec.name),
            Reply::Integer(spec.arity),
            Reply::Array(spec.flags.iter().map(|&f| Reply::Simple(f)).collect()),
            Reply::Integer(spec.first_key),
            Reply::Integer(spec.last_key),
            Reply::Integer(spec.step),
            // ACL categories, tips, key specifications, subcommands.
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
        ])
    };
    let Some(sub) = args.first().map(|s| s.to_ascii_lowercase()) else {
        return Reply::Array(SUPPORTED.iter().map(info).collect());
    };
    match &sub[..] {
        b"count" => Reply::Integer(SUPPORTED.len() as i64),
        b"info" => Reply::Array(
            args[1..]
                .iter()
                .map(|name| command::find(name).map_or(Reply::Null, info))
                .collect(),
        ),
        b"docs" => {
            let specs: Vec<&Spec> = if args.len() == 1 {
                SUPPORTED.iter().collect()
            } else {
                args[1..]
                    .iter()
                    .filter_map(|name| command::find(name))
                    .collect()
            };
            Reply::Map(
                specs
                    .into_iter()
                    .map(|spec| {
                        let group = if spec.flags.contains(&"readonly") {
                            "string"
                        } else {
                            "connection"
                        };
                        let doc = Reply::Map(vec![
                            (Reply::text("summary"), Reply::text(spec.summary)),
                            (Reply::text("since"), Reply::text("1.0.0")),
                            (Reply::text("group"), Reply::text(group)),
                        ]);
                        (Reply::text(spec.name), doc)
                    })
                    .collect(),
            )
        }
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. redis-proxy supports COMMAND, COMMAND COUNT, COMMAND INFO, COMMAND DOCS",
            printable(&args[0])
        )),
    }
}
