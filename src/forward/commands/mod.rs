//! What the backing Redis says about its commands (`COMMAND`, read once): their
//! flags and, from their key specifications, which arguments are keys.
//!
//! A key specification says where the keys begin (at an index, or after a
//! keyword) and how to find them from there (a range with a step, or a count
//! argument followed by that many keys). A specification of a kind this table
//! does not know makes the command's keys unknown, and a write with unknown
//! keys invalidates the whole cache.

use std::collections::HashMap;

use crate::protocol::{Combine, Name, Value};
use bytes::Bytes;

/// A map by lower-case name, hashed with foldhash: it is read for every
/// forwarded request, and its keys are Redis's own names, not a client's.
type Names<V> = HashMap<Vec<u8>, V, foldhash::fast::FixedState>;

/// Flags of a command that decide how it is forwarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    /// `readonly`: never changes data; its keys are not invalidated.
    pub(crate) readonly: bool,
    /// `blocking`: may wait for another client; runs on a dedicated connection.
    pub(crate) blocking: bool,
    /// `admin`: refused unless admin commands are forwarded.
    pub(crate) admin: bool,
    /// In the ACL category `@scripting`: runs server-side code (or manages
    /// it), whose keys the proxy cannot see.
    pub(crate) scripting: bool,
}

/// Where a key specification's keys begin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Begin {
    /// At this argument (0: the command's name).
    Index(usize),
    /// After the first argument equal to `keyword`, searched from `from`
    /// (negative: counted from the end, searching backwards).
    Keyword { keyword: Vec<u8>, from: i64 },
}

/// How a key specification's keys are found from where they begin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Find {
    /// Up to `last` (relative to the beginning; negative: from the end), every
    /// `step`-th argument; `limit` > 1 takes only that fraction of the rest.
    Range {
        last: i64,
        step: usize,
        limit: usize,
    },
    /// The argument at `count` holds how many keys follow from `first`, every
    /// `step`-th one.
    Keynum {
        count: usize,
        first: usize,
        step: usize,
    },
}

/// One key specification.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeySpec {
    begin: Begin,
    find: Find,
    /// Redis's `not_key` flag: the argument places the command in a cluster
    /// (a shard channel) but is no key, so key permissions do not apply.
    not_key: bool,
}

/// One command (or subcommand) as Redis describes it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Info {
    /// Number of arguments including the name; negative means "at least".
    arity: i64,
    pub(crate) flags: Flags,
    /// `None` when a specification is of a kind this table does not know.
    specs: Option<Vec<KeySpec>>,
    /// Subcommands by lower-case name (`get` for `CONFIG GET`).
    subcommands: Names<Info>,
    /// In a cluster: sent to every primary, the replies combined so (from the
    /// command's tips); `None`: sent to one node.
    pub(crate) spread: Option<Combine>,
    /// Where keys are spread over servers that cannot take them in one
    /// command (a sharded pool): split by server, the replies combined so
    /// (`DEL`, `MSET`, …); `None`: refused when its keys are on several.
    pub(crate) split: Option<Combine>,
}

impl Info {
    /// The description that applies to `args`: a subcommand's, when it has one.
    pub(crate) fn resolve(&self, args: &[Bytes]) -> &Info {
        match args.get(1) {
            Some(sub) if !self.subcommands.is_empty() => self
                .subcommands
                .get(Name::lower(sub).as_bytes())
                .unwrap_or(self),
            _ => self,
        }
    }

    /// Whether `args` (the name included) has a number of arguments the
    /// command accepts. A wrong count is Redis's to report; the proxy only needs
    /// to know that it cannot find keys in it.
    fn arity_fits(&self, n: usize) -> bool {
        let n = n as i64;
        if self.arity >= 0 {
            n == self.arity
        } else {
            n >= -self.arity
        }
    }

    /// The keys of `args` (the name included): `None` when they cannot be
    /// known. Keys beyond the arguments given are not invented; a malformed
    /// request has the keys that can be found, and Redis refuses it anyway.
    pub(crate) fn keys(&self, args: &[Bytes]) -> Option<Vec<Bytes>> {
        self.find_keys(args, true)
    }

    /// The keys of `args` that key permissions apply to: [`Info::keys`]
    /// without the arguments Redis flags `not_key` (shard channels).
    pub(crate) fn access_keys(&self, args: &[Bytes]) -> Option<Vec<Bytes>> {
        self.find_keys(args, false)
    }

    fn find_keys(&self, args: &[Bytes], not_keys: bool) -> Option<Vec<Bytes>> {
        let specs = self.specs.as_ref()?;
        let mut keys = Vec::new();
        if !self.arity_fits(args.len()) {
            return Some(keys);
        }
        for spec in specs.iter().filter(|spec| not_keys || !spec.not_key) {
            let Some(begin) = begin(&spec.begin, args) else {
                continue;
            };
            match spec.find {
                Find::Range { last, step, limit } => {
                    let last = if last >= 0 {
                        begin + last as usize
                    } else {
                        let remaining = (args.len() as i64 + last) as usize;
                        if limit > 1 {
                            begin + (remaining + 1 - begin) / limit - 1
                        } else {
                            remaining
                        }
                    };
                    let mut i = begin;
                    while i <= last && i < args.len() {
                        keys.push(args[i].clone());
                        i += step.max(1);
                    }
                }
                Find::Keynum { count, first, step } => {
                    let n = args
                        .get(begin + count)
                        .and_then(|n| std::str::from_utf8(n).ok())
                        .and_then(|n| n.parse::<usize>().ok())?;
                    let mut i = begin + first;
                    for _ in 0..n {
                        let Some(key) = args.get(i) else { break };
                        keys.push(key.clone());
                        i += step.max(1);
                    }
                }
            }
        }
        Some(keys)
    }
}

/// Where `begin` puts the first key in `args`, if anywhere.
fn begin(begin: &Begin, args: &[Bytes]) -> Option<usize> {
    match begin {
        Begin::Index(i) => Some(*i),
        Begin::Keyword { keyword, from } => {
            let n = args.len() as i64;
            let found = if *from >= 0 {
                (*from..n).find(|&i| args[i as usize].eq_ignore_ascii_case(keyword))
            } else {
                (1..=(n + from))
                    .rev()
                    .find(|&i| args[i as usize].eq_ignore_ascii_case(keyword))
            };
            found.map(|i| i as usize + 1)
        }
    }
}

/// Every command of the backing Redis, by lower-case name.
#[derive(Debug, Default)]
pub(crate) struct Table {
    commands: Names<Info>,
}

impl Table {
    /// The table described by a `COMMAND` reply (RESP2 or RESP3).
    pub(crate) fn from_reply(reply: &Value) -> Result<Self, String> {
        let entries = array(reply).ok_or("COMMAND did not answer an array")?;
        let mut commands = Names::with_capacity_and_hasher(entries.len(), Default::default());
        for entry in entries {
            let (name, info) = parse_info(entry)?;
            commands.insert(name, info);
        }
        Ok(Self { commands })
    }

    /// The command called `name`, in any case.
    pub(crate) fn get(&self, name: &[u8]) -> Option<&Info> {
        self.get_lowercase(Name::lower(name).as_bytes())
    }

    /// [`Table::get`] of a name already in lower case: no copy.
    pub(crate) fn get_lowercase(&self, name: &[u8]) -> Option<&Info> {
        self.commands.get(name)
    }

    /// How many commands the table holds.
    pub(crate) fn len(&self) -> usize {
        self.commands.len()
    }
}

fn array(value: &Value) -> Option<&[Value]> {
    value.items()
}

fn text(value: &Value) -> Option<Vec<u8>> {
    value.text_lowercase()
}

fn int(value: &Value) -> Option<i64> {
    value.int()
}

/// The fields of a map, given as a RESP3 map or a RESP2 array of pairs.
fn fields(value: &Value) -> Option<Vec<(Vec<u8>, &Value)>> {
    value.fields()
}

fn field<'a>(fields: &'a [(Vec<u8>, &'a Value)], name: &str) -> Option<&'a Value> {
    fields
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| *v)
}

fn parse_info(entry: &Value) -> Result<(Vec<u8>, Info), String> {
    let items = array(entry).ok_or("a COMMAND entry is not an array")?;
    let name = items
        .first()
        .and_then(text)
        .ok_or("a COMMAND entry has no name")?;
    let arity = items.get(1).and_then(int).unwrap_or(0);
    let mut flags = Flags::default();
    for flag in items.get(2).and_then(array).unwrap_or_default() {
        match text(flag).as_deref() {
            Some(b"readonly") => flags.readonly = true,
            Some(b"blocking") => flags.blocking = true,
            Some(b"admin") => flags.admin = true,
            _ => {}
        }
    }
    flags.scripting = items
        .get(6)
        .and_then(array)
        .unwrap_or_default()
        .iter()
        .any(|category| text(category).as_deref() == Some(b"@scripting"));
    let specs = items
        .get(8)
        .and_then(array)
        .unwrap_or_default()
        .iter()
        .map(parse_spec)
        .collect::<Option<Vec<_>>>();
    let tips: Vec<Vec<u8>> = items
        .get(7)
        .and_then(array)
        .unwrap_or_default()
        .iter()
        .filter_map(text)
        .collect();
    let spread = Combine::from_tips(&tips);
    let split = Combine::from_split_tips(&tips);
    let mut subcommands = Names::default();
    for sub in items.get(9).and_then(array).unwrap_or_default() {
        // Redis 7 gives a subcommand's full name, `config|get`; it is found
        // as `get` under `config`, by the request's second argument.
        let (full, info) = parse_info(sub)?;
        let short = match full.iter().position(|&b| b == b'|') {
            Some(bar) => full[bar + 1..].to_vec(),
            None => full,
        };
        subcommands.insert(short, info);
    }
    Ok((
        name,
        Info {
            arity,
            flags,
            specs,
            subcommands,
            spread,
            split,
        },
    ))
}

/// One key specification; `None` for a kind this table does not know.
fn parse_spec(spec: &Value) -> Option<KeySpec> {
    let spec = fields(spec)?;
    let begin = fields(field(&spec, "begin_search")?)?;
    let find = fields(field(&spec, "find_keys")?)?;
    let begin_spec = fields(field(&begin, "spec")?)?;
    let find_spec = fields(field(&find, "spec")?)?;
    let begin = match text(field(&begin, "type")?)?.as_slice() {
        b"index" => Begin::Index(usize::try_from(int(field(&begin_spec, "index")?)?).ok()?),
        b"keyword" => Begin::Keyword {
            keyword: text(field(&begin_spec, "keyword")?)?,
            from: int(field(&begin_spec, "startfrom")?)?,
        },
        _ => return None,
    };
    let find = match text(field(&find, "type")?)?.as_slice() {
        b"range" => Find::Range {
            last: int(field(&find_spec, "lastkey")?)?,
            step: usize::try_from(int(field(&find_spec, "keystep")?)?).ok()?,
            limit: usize::try_from(int(field(&find_spec, "limit")?)?).ok()?,
        },
        b"keynum" => Find::Keynum {
            count: usize::try_from(int(field(&find_spec, "keynumidx")?)?).ok()?,
            first: usize::try_from(int(field(&find_spec, "firstkey")?)?).ok()?,
            step: usize::try_from(int(field(&find_spec, "keystep")?)?).ok()?,
        },
        _ => return None,
    };
    let not_key = field(&spec, "flags")
        .and_then(array)
        .unwrap_or_default()
        .iter()
        .any(|flag| text(flag).as_deref() == Some(b"not_key"));
    Some(KeySpec {
        begin,
        find,
        not_key,
    })
}

#[cfg(test)]
mod tests;
