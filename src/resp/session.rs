//! What one connection knows about itself, and the commands that only concern
//! it: `HELLO`, `AUTH`, `SELECT`, `CLIENT`, `COMMAND`, `RESET`, `PING`, `ECHO`,
//! `QUIT`, `INFO`. Reads become keys for the stack; everything else is answered
//! here, in order with the reads around it (see [`Planned`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

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
    /// The same for `HELLO protover AUTH …`: the credentials asked of Redis,
    /// then the protocol and name set if it accepts them. Requests after it
    /// wait, since they are answered in the protocol it chooses.
    Hello(Credentials, Protocol, Option<Bytes>),
    /// `CLIENT UNBLOCK` of a client on a dedicated connection: the one
    /// Redis lists at this address, on the node of this slot, with this
    /// reason.
    Unblock(SocketAddr, Option<u16>, Option<Bytes>),
}

/// What one connection knows about itself.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: u64,
    peer: SocketAddr,
    pub(super) protocol: Protocol,
    name: Option<Bytes>,
    /// The database the connection reads: `None` for the backend's own.
    db: Option<u16>,
    /// What the client said of itself with `CLIENT SETINFO`.
    library: (Option<Bytes>, Option<Bytes>),
    /// Who the client is: `None` until it authenticates, when it must.
    user: Option<Arc<User>>,
    /// What the other connections see of this one (`CLIENT LIST`), and its
    /// token: cancelled to end the connection (a revoked user, `CLIENT
    /// KILL`), and once it ends.
    pub(super) entry: Arc<super::clients::Entry>,
    /// The last command received, published after each batch.
    pub(super) last_command: Option<super::clients::Name>,
    /// `CLIENT TRACKING ON`'s options, while tracking is on.
    tracking: Option<super::tracking::Options>,
    /// `CLIENT CACHING YES|NO`, for the next command only.
    caching: Option<bool>,
    /// `CLIENT REPLY`: which replies are not sent.
    replies: Replies,
}

/// Which replies `CLIENT REPLY` keeps from the client, as Redis's flags do.
#[derive(Debug, Default)]
struct Replies {
    /// `OFF`: none until `ON`.
    off: bool,
    /// The current command's (`SKIP` came before it).
    skip: bool,
    /// The next command's (the current one is `SKIP`).
    skip_next: bool,
    /// The current command is `CLIENT REPLY OFF` or `SKIP`, which have none.
    none: bool,
}

/// The reply to a command sent before authenticating.
pub(super) const NOAUTH: &str = "NOAUTH Authentication required.";
/// The reply to wrong credentials, or those of a disabled user.
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// The reply to a read of a key outside the user's patterns.
const NOPERM: &str = "NOPERM No permissions to access a key";

impl Session {
    /// A new connection's session, as `user` (`None`: not authenticated yet).
    pub(super) fn new(entry: Arc<super::clients::Entry>, user: Option<Arc<User>>) -> Self {
        Self {
            id: entry.id,
            peer: entry.peer,
            protocol: Protocol::Resp2,
            name: None,
            db: None,
            library: (None, None),
            user,
            entry,
            last_command: None,
            tracking: None,
            caching: None,
            replies: Replies::default(),
        }
    }

    /// Whether the reply to the command just planned is kept from the
    /// client (`CLIENT REPLY`); the next command's is decided from here.
    pub(super) fn unsent(&mut self) -> bool {
        let replies = &mut self.replies;
        let none = std::mem::take(&mut replies.none);
        let unsent = none || replies.off || replies.skip;
        replies.skip = std::mem::take(&mut replies.skip_next);
        unsent
    }

    /// Publishes what the connection is now, for `CLIENT LIST`.
    pub(super) fn publish(&self, databases: &Databases) {
        self.entry.publish(|state| {
            state.name = self.name.clone();
            state.db = databases.index(self.db);
            state.user = self
                .user
                .as_ref()
                .map_or("default", |user| user.name())
                .to_owned();
            state.resp = self.protover();
            state.library = self.library.clone();
            state.tracking = (self.tracking.as_ref())
                .map(|options| (options.broadcast.is_some(), options.redirect.unwrap_or(0)));
        });
    }

    /// Publishes the last command received and when, after a batch.
    pub(super) fn publish_command(&mut self) {
        if let Some(command) = self.last_command.take() {
            self.entry.publish(|state| {
                state.command = Some(command);
                state.active = std::time::Instant::now();
            });
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
        let publishes = matches!(
            command,
            Command::Hello { .. }
                | Command::Auth(_)
                | Command::Select(_)
                | Command::Client(_)
                | Command::Reset
        );
        let caching =
            matches!(&command, Command::Client(args) if args[0].eq_ignore_ascii_case(b"caching"));
        let planned = self.plan_command(command, requests, resp);
        if publishes {
            self.publish(&resp.databases);
        }
        if !caching {
            self.caching = None;
        }
        planned
    }

    /// With tracking on: remembers that the connection read `names`, unless
    /// `OPTIN`/`OPTOUT` and `CLIENT CACHING` say otherwise. Broadcast mode
    /// remembers nothing.
    fn track<'a, S>(&self, names: impl IntoIterator<Item = &'a Bytes>, resp: &Resp<S>) {
        let Some(options) = &self.tracking else {
            return;
        };
        let remembered = match (options.optin, options.optout) {
            (true, _) => self.caching == Some(true),
            (_, true) => self.caching != Some(false),
            _ => true,
        };
        if remembered && options.broadcast.is_none() {
            resp.tracking.read(self.id, names);
        }
    }

    fn plan_command<S>(
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
                self.track([&name], resp);
                requests.push_back(Request::Get(Key::in_db(self.db, name)));
                return Planned::Get(self.protocol);
            }
            Command::MGet(names) if user.may_read_all(names.iter().map(|n| &n[..])) => {
                self.track(&names, resp);
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
                auth: Some(credentials),
                setname,
            } if resp.forwarding.is_some() && !resp.access.required() => {
                return match self.protocol_of(protover) {
                    Ok(protocol) => Planned::Hello(credentials, protocol, setname),
                    Err(reply) => Planned::Reply(reply, self.protocol),
                };
            }
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
            Command::Client(args)
                if args[0].eq_ignore_ascii_case(b"unblock")
                    && (2..=3).contains(&args.len())
                    && resp.forwarding.as_ref().is_some_and(|f| f.admin()) =>
            {
                return self.client_unblock(&args, resp);
            }
            Command::Client(args) => self.client(args, resp),
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
        if let Some(options) = &self.tracking {
            match &route {
                Route::Cached => self.track([&args[1]], resp),
                Route::Forward {
                    read_only: true, ..
                } => self.track(&forwarding.keys(&args).unwrap_or_default(), resp),
                Route::Forward {
                    writes: crate::lookup::Writes::Keys(keys),
                    ..
                } if options.noloop => resp.tracking.wrote(self.id, keys),
                _ => {}
            }
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
                let (revoked, closing) = (user.revoked().clone(), self.entry.closing.clone());
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
        self.stop_tracking(resp);
        self.replies = Replies::default();
        Reply::Simple("RESET")
    }

    /// Turns tracking off (it may be off already).
    pub(super) fn stop_tracking<S>(&mut self, resp: &Resp<S>) {
        if self.tracking.take().is_some() {
            resp.tracking.disable(self.id);
        }
    }

    /// Switches to database `db`, which the backend has confirmed.
    pub(super) fn select(&mut self, db: Option<u16>, databases: &Databases) {
        self.db = db;
        self.publish(databases);
    }

    fn hello<S>(
        &mut self,
        protover: Option<Bytes>,
        auth: Option<Credentials>,
        setname: Option<Bytes>,
        resp: &Resp<S>,
    ) -> Reply {
        // Validate everything before changing anything, as Redis does.
        let protocol = match self.protocol_of(protover) {
            Ok(protocol) => protocol,
            Err(reply) => return reply,
        };
        if let Some(credentials) = auth {
            let reply = self.auth(&credentials, resp);
            if reply != Reply::OK {
                return reply;
            }
        }
        self.hello_done(protocol, setname, resp)
    }

    /// The protocol `HELLO protover` asks for (none: the current one).
    fn protocol_of(&self, protover: Option<Bytes>) -> Result<Protocol, Reply> {
        let Some(version) = protover else {
            return Ok(self.protocol);
        };
        match std::str::from_utf8(&version)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        {
            Some(2) => Ok(Protocol::Resp2),
            Some(3) => Ok(Protocol::Resp3),
            Some(_) => Err(Reply::error("NOPROTO unsupported protocol version")),
            None => Err(Reply::error(
                "ERR Protocol version is not an integer or out of range",
            )),
        }
    }

    /// `HELLO` once its credentials are accepted: the name set, the
    /// protocol switched, and the server described (in transparent mode, with
    /// the backend's version).
    pub(super) fn hello_done<S>(
        &mut self,
        protocol: Protocol,
        setname: Option<Bytes>,
        resp: &Resp<S>,
    ) -> Reply {
        if let Some(Err(reply)) = setname.map(|name| self.set_name(name)) {
            return reply;
        }
        self.protocol = protocol;
        self.publish(&resp.databases);
        let version = (resp.forwarding.as_ref())
            .and_then(|forwarding| forwarding.version())
            .unwrap_or(REDIS_VERSION);
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("redis")),
            (Reply::text("version"), Reply::text(version)),
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

    fn client<S>(&mut self, args: Vec<Bytes>, resp: &Resp<S>) -> Reply {
        let sub = args[0].to_ascii_lowercase();
        let admin = resp.forwarding.as_ref().is_some_and(|f| f.admin());
        match (&sub[..], args.len()) {
            (b"list" | b"kill" | b"pause" | b"unpause" | b"unblock", _) if !admin => {
                Reply::error(format!(
                    "ERR 'client|{}' is an admin command, which redis-proxy answers only with --forward-admin-commands",
                    printable(&sub)
                ))
            }
            (b"list", _) => self.client_list(&args[1..], resp),
            (b"pause", 2 | 3) => client_pause(&args[1..], resp),
            (b"unpause", 1) => {
                resp.pause.unpause();
                Reply::OK
            }
            (b"getredir", 1) => Reply::Integer(match &self.tracking {
                None => -1,
                Some(options) => options.redirect.unwrap_or(0) as i64,
            }),
            (b"trackinginfo", 1) => self.tracking_info(),
            (b"tracking", 2..) => self.client_tracking(&args[1..], resp),
            (b"caching", 2) => self.client_caching(&args[1]),
            (b"reply", 2) => {
                let replies = &mut self.replies;
                match &args[1].to_ascii_lowercase()[..] {
                    b"on" => {
                        (replies.off, replies.skip) = (false, false);
                        return Reply::OK;
                    }
                    b"off" => replies.off = true,
                    b"skip" => replies.skip_next = !replies.off,
                    _ => return Reply::error("ERR syntax error"),
                }
                replies.none = true;
                Reply::OK
            }
            (b"kill", 1) => Reply::error("ERR wrong number of arguments for 'client|kill' command"),
            (b"kill", _) => self.client_kill(&args[1..], resp),
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
            (b"info", 1) => {
                self.publish(&resp.databases);
                Reply::text(self.entry.line(Some("client|info")))
            }
            // The proxy never evicts or times out a client connection for its
            // memory, and its reads do not touch keys' access times on the
            // client's behalf: both are accepted as already in force.
            (b"no-evict" | b"no-touch", 2)
                if args[1].eq_ignore_ascii_case(b"on") || args[1].eq_ignore_ascii_case(b"off") =>
            {
                Reply::OK
            }
            (
                b"setname" | b"getname" | b"id" | b"setinfo" | b"info" | b"tracking" | b"caching"
                | b"getredir" | b"trackinginfo" | b"reply" | b"unblock",
                _,
            ) => Reply::error(format!(
                "ERR wrong number of arguments for 'client|{}' command",
                printable(&sub)
            )),
            _ => Reply::error(format!(
                "ERR unknown subcommand '{}'. redis-proxy supports CLIENT SETNAME, GETNAME, ID, SETINFO, INFO, LIST, KILL, PAUSE, UNPAUSE, REPLY, TRACKING, CACHING, GETREDIR, TRACKINGINFO, NO-EVICT, NO-TOUCH",
                printable(&args[0])
            )),
        }
    }

    /// `CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p …] [BCAST] [OPTIN]
    /// [OPTOUT] [NOLOOP]`, checked as Redis 7 checks it.
    fn client_tracking<S>(&mut self, args: &[Bytes], resp: &Resp<S>) -> Reply {
        if !resp.tracking.served() {
            return Reply::error(
                "ERR CLIENT TRACKING (client-side caching) is served by redis-proxy only with --invalidation tracking, which tells it of every change in Redis",
            );
        }
        let mut options = super::tracking::Options::default();
        let mut prefixes = Vec::new();
        let mut bcast = false;
        let mut rest = args[1..].iter();
        while let Some(option) = rest.next() {
            match &option.to_ascii_lowercase()[..] {
                b"redirect" if rest.len() > 0 => {
                    if options.redirect.is_some() {
                        return Reply::error(
                            "ERR A client can only redirect to a single other client",
                        );
                    }
                    let Some(id) = (std::str::from_utf8(rest.next().expect("counted")).ok())
                        .and_then(|id| id.parse::<u64>().ok())
                    else {
                        return Reply::error("ERR value is not an integer or out of range");
                    };
                    options.redirect = Some(id);
                }
                b"prefix" if rest.len() > 0 => prefixes.push(rest.next().expect("counted").clone()),
                b"bcast" => bcast = true,
                b"optin" => options.optin = true,
                b"optout" => options.optout = true,
                b"noloop" => options.noloop = true,
                _ => return Reply::error("ERR syntax error"),
            }
        }
        if args[0].eq_ignore_ascii_case(b"off") {
            self.stop_tracking(resp);
            return Reply::OK;
        }
        if !args[0].eq_ignore_ascii_case(b"on") {
            return Reply::error("ERR syntax error");
        }
        let redirect = match options.redirect {
            // Redis's: a target that does not exist (`CLIENT ID`s start at 1).
            Some(id) => match resp.clients.get(id) {
                Some(target) => Some(target),
                None => {
                    return Reply::error("ERR The client ID you want redirect to does not exist");
                }
            },
            None => None,
        };
        if !bcast && !prefixes.is_empty() {
            return Reply::error("ERR PREFIX option requires BCAST mode to be enabled");
        }
        if let Some(old) = &self.tracking
            && old.broadcast.is_some() != bcast
        {
            return Reply::error(
                "ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.",
            );
        }
        if bcast && (options.optin || options.optout) {
            return Reply::error("ERR OPTIN and OPTOUT are not compatible with BCAST");
        }
        if options.optin && options.optout {
            return Reply::error("ERR You can't specify both OPTIN mode and OPTOUT mode");
        }
        if let Some(old) = &self.tracking
            && ((options.optin && old.optout) || (options.optout && old.optin))
        {
            return Reply::error(
                "ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.",
            );
        }
        if bcast {
            let mut all = (self.tracking.as_ref())
                .and_then(|old| old.broadcast.clone())
                .unwrap_or_default();
            let overlap = |a: &Bytes, b: &Bytes| a.starts_with(b) || b.starts_with(a);
            for (i, prefix) in prefixes.iter().enumerate() {
                let existing = all.iter().find(|old| overlap(old, prefix));
                let provided = prefixes[i + 1..]
                    .iter()
                    .find(|other| overlap(other, prefix));
                let (kind, other) = match (existing, provided) {
                    (Some(old), _) => ("an existing", old),
                    (None, Some(other)) => ("another provided", other),
                    (None, None) => continue,
                };
                return Reply::error(format!(
                    "ERR Prefix '{}' overlaps with {kind} prefix '{}'. Prefixes for a single client must not overlap.",
                    printable(prefix),
                    printable(other)
                ));
            }
            all.extend(prefixes);
            options.broadcast = Some(all);
        }
        if let Some(old) = &self.tracking {
            // On again adds to what was asked before, as Redis's flags do.
            options.optin |= old.optin;
            options.optout |= old.optout;
            options.noloop |= old.noloop;
        }
        resp.tracking.enable(&self.entry, &options, redirect);
        self.tracking = Some(options);
        Reply::OK
    }

    /// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: a client of the proxy's blocked
    /// on its dedicated connection is unblocked by Redis, which is asked
    /// for that connection and answers as for its own clients.
    fn client_unblock<S>(&self, args: &[Bytes], resp: &Resp<S>) -> Planned {
        let reply = |reply| Planned::Reply(reply, self.protocol);
        let Some(id) = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|id| id.parse::<u64>().ok())
        else {
            return reply(Reply::error("ERR value is not an integer or out of range"));
        };
        if let Some(mode) = args.get(2)
            && !mode.eq_ignore_ascii_case(b"timeout")
            && !mode.eq_ignore_ascii_case(b"error")
        {
            return reply(Reply::error(
                "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
            ));
        }
        // Only a client on a dedicated connection can be blocked.
        match resp.clients.get(id).and_then(|entry| entry.dedicated()) {
            Some((listed, slot)) => Planned::Unblock(listed, slot, args.get(2).cloned()),
            None => reply(Reply::Integer(0)),
        }
    }

    /// `CLIENT CACHING YES|NO`: whether the next command's reads are
    /// remembered, in `OPTIN` or `OPTOUT` mode.
    fn client_caching(&mut self, answer: &Bytes) -> Reply {
        let (optin, optout) = match &self.tracking {
            Some(options) => (options.optin, options.optout),
            None => (false, false),
        };
        if !optin && !optout {
            return Reply::error(
                "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
            );
        }
        match &answer.to_ascii_lowercase()[..] {
            b"yes" if optin => self.caching = Some(true),
            b"yes" => {
                return Reply::error(
                    "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
                );
            }
            b"no" if optout => self.caching = Some(false),
            b"no" => {
                return Reply::error(
                    "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
                );
            }
            _ => return Reply::error("ERR syntax error"),
        }
        Reply::OK
    }

    /// `CLIENT TRACKINGINFO`, as Redis 7 gives it.
    fn tracking_info(&self) -> Reply {
        let Some(options) = &self.tracking else {
            return Reply::Map(vec![
                (Reply::text("flags"), Reply::Array(vec![Reply::text("off")])),
                (Reply::text("redirect"), Reply::Integer(-1)),
                (Reply::text("prefixes"), Reply::Array(Vec::new())),
            ]);
        };
        let mut flags = vec![Reply::text("on")];
        let named = [
            (options.broadcast.is_some(), "bcast"),
            (options.optin, "optin"),
            (options.optout, "optout"),
            (self.caching == Some(true), "caching-yes"),
            (self.caching == Some(false), "caching-no"),
            (options.noloop, "noloop"),
        ];
        flags.extend(
            (named.iter())
                .filter(|(on, _)| *on)
                .map(|(_, flag)| Reply::text(*flag)),
        );
        let prefixes = (options.broadcast.iter().flatten())
            .map(|prefix| Reply::Bulk(prefix.clone()))
            .collect();
        Reply::Map(vec![
            (Reply::text("flags"), Reply::Array(flags)),
            (
                Reply::text("redirect"),
                Reply::Integer(options.redirect.unwrap_or(0) as i64),
            ),
            (Reply::text("prefixes"), Reply::Array(prefixes)),
        ])
    }

    /// `CLIENT LIST [TYPE normal] [ID id …]`: the proxy's clients, this one
    /// as it is now.
    fn client_list<S>(&self, args: &[Bytes], resp: &Resp<S>) -> Reply {
        self.publish(&resp.databases);
        let mut ids: Option<Vec<u64>> = None;
        let mut args = args.iter();
        while let Some(option) = args.next() {
            match (&option.to_ascii_lowercase()[..], args.next()) {
                (b"type", Some(kind)) if kind.eq_ignore_ascii_case(b"normal") => {}
                (b"type", Some(kind))
                    if [&b"master"[..], b"replica", b"slave", b"pubsub"]
                        .iter()
                        .any(|k| kind.eq_ignore_ascii_case(k)) =>
                {
                    // No client of the proxy is one of those.
                    return Reply::text(String::new());
                }
                (b"type", Some(kind)) => {
                    return Reply::error(format!("ERR Unknown client type '{}'", printable(kind)));
                }
                (b"id", Some(first)) => {
                    let mut wanted = vec![first];
                    wanted.extend(args.by_ref());
                    let parsed: Option<Vec<u64>> = (wanted.iter())
                        .map(|id| std::str::from_utf8(id).ok()?.parse().ok())
                        .collect();
                    match parsed {
                        Some(parsed) => ids = Some(parsed),
                        None => return Reply::error("ERR Invalid client ID"),
                    }
                }
                _ => return Reply::error("ERR syntax error"),
            }
        }
        let lines: String = (resp.clients.all().iter())
            .filter(|entry| ids.as_ref().is_none_or(|ids| ids.contains(&entry.id)))
            .map(|entry| match entry.id == self.id {
                true => entry.line(Some("client|list")),
                false => entry.line(None),
            })
            .collect();
        Reply::text(lines)
    }

    /// `CLIENT KILL ip:port` (`OK`, or no such client) or `CLIENT KILL
    /// <filter> <value> …` (how many were killed) over the proxy's clients.
    fn client_kill<S>(&self, args: &[Bytes], resp: &Resp<S>) -> Reply {
        let (filter, old_form) = match super::clients::Filter::parse(args) {
            Ok(parsed) => parsed,
            Err(error) => return Reply::error(error),
        };
        let killed: Vec<_> = (resp.clients.all().into_iter())
            .filter(|entry| filter.matches(entry, self.id))
            .collect();
        for entry in &killed {
            tracing::info!(client = %entry.peer, id = entry.id, "CLIENT KILL");
            entry.closing.cancel();
        }
        match (old_form, killed.len()) {
            (true, 0) => Reply::error("ERR No such client"),
            (true, _) => Reply::OK,
            (false, n) => Reply::Integer(n as i64),
        }
    }
}

/// `CLIENT PAUSE timeout [WRITE|ALL]`: the proxy's clients wait (it is not
/// forwarded).
fn client_pause<S>(args: &[Bytes], resp: &Resp<S>) -> Reply {
    let Some(millis) = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|millis| millis.parse::<u64>().ok())
    else {
        return Reply::error("ERR timeout is not an integer or out of range");
    };
    let all = match args.get(1) {
        None => true,
        Some(mode) if mode.eq_ignore_ascii_case(b"all") => true,
        Some(mode) if mode.eq_ignore_ascii_case(b"write") => false,
        Some(_) => return Reply::error("ERR syntax error"),
    };
    resp.pause
        .pause(std::time::Duration::from_millis(millis), all);
    Reply::OK
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
