//! The command table read from `COMMAND` replies: key specifications,
//! subcommands, tips, ACL categories.
use super::*;
use crate::testing::args;

fn keys(info: &Info, words: &str) -> Option<Vec<String>> {
    info.keys(&args(words)).map(|keys| {
        keys.iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    })
}

fn info(arity: i64, specs: Vec<KeySpec>) -> Info {
    Info {
        arity,
        specs: Some(specs),
        ..Info::default()
    }
}

fn bulk(text: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(text.as_bytes()))
}

fn list(items: Vec<Value>) -> Value {
    Value::Array(items)
}

/// A `COMMAND` entry: name, arity, flags, first/last/step, categories,
/// tips, key specifications, subcommands.
fn entry(
    name: &str,
    arity: i64,
    flags: &[&str],
    tips: &[&str],
    specs: Vec<Value>,
    subs: Vec<Value>,
) -> Value {
    let words = |w: &[&str]| list(w.iter().map(|w| bulk(w)).collect());
    list(vec![
        bulk(name),
        Value::Int(arity),
        words(flags),
        Value::Int(0),
        Value::Int(0),
        Value::Int(0),
        list(vec![]),
        words(tips),
        list(specs),
        list(subs),
    ])
}

#[test]
fn subcommands_are_found_by_the_second_argument_with_their_own_keys_and_tips() {
    let key_at_2 = list(vec![
        bulk("begin_search"),
        list(vec![
            bulk("type"),
            bulk("index"),
            bulk("spec"),
            list(vec![bulk("index"), Value::Int(2)]),
        ]),
        bulk("find_keys"),
        list(vec![
            bulk("type"),
            bulk("range"),
            bulk("spec"),
            list(vec![
                bulk("lastkey"),
                Value::Int(0),
                bulk("keystep"),
                Value::Int(1),
                bulk("limit"),
                Value::Int(0),
            ]),
        ]),
    ]);
    let encoding = entry(
        "object|encoding",
        3,
        &["readonly"],
        &[],
        vec![key_at_2],
        vec![],
    );
    let load = entry(
        "script|load",
        3,
        &["noscript"],
        &["request_policy:all_nodes", "response_policy:all_succeeded"],
        vec![],
        vec![],
    );
    let reply = list(vec![
        entry("object", -2, &[], &[], vec![], vec![encoding]),
        entry("script", -2, &[], &[], vec![], vec![load]),
        entry(
            "dbsize",
            1,
            &["readonly"],
            &["request_policy:all_shards", "response_policy:agg_sum"],
            vec![],
            vec![],
        ),
    ]);
    let table = Table::from_reply(&reply).unwrap();
    assert_eq!(table.len(), 3);

    let object = args("OBJECT ENCODING k");
    let info = table.get(b"OBJECT").unwrap().resolve(&object);
    assert!(info.flags.readonly);
    assert_eq!(keys(info, "OBJECT ENCODING k").unwrap(), ["k"]);

    let load = args("SCRIPT LOAD body");
    let info = table.get(b"script").unwrap().resolve(&load);
    assert_eq!(info.spread, Some(Combine::AllSucceeded));
    assert_eq!(table.get(b"script").unwrap().spread, None);
    assert_eq!(table.get(b"dbsize").unwrap().spread, Some(Combine::Sum));
}

#[test]
fn ranges_take_every_step_up_to_the_last() {
    let mset = info(
        -3,
        vec![KeySpec {
            begin: Begin::Index(1),
            find: Find::Range {
                last: -1,
                step: 2,
                limit: 0,
            },
            not_key: false,
        }],
    );
    assert_eq!(keys(&mset, "MSET a 1 b 2").unwrap(), ["a", "b"]);
    let rename = info(
        3,
        vec![
            KeySpec {
                begin: Begin::Index(1),
                find: Find::Range {
                    last: 0,
                    step: 1,
                    limit: 0,
                },
                not_key: false,
            },
            KeySpec {
                begin: Begin::Index(2),
                find: Find::Range {
                    last: 0,
                    step: 1,
                    limit: 0,
                },
                not_key: false,
            },
        ],
    );
    assert_eq!(keys(&rename, "RENAME a b").unwrap(), ["a", "b"]);
    // BLPOP a b 0: every argument but the last.
    let blpop = info(
        -3,
        vec![KeySpec {
            begin: Begin::Index(1),
            find: Find::Range {
                last: -2,
                step: 1,
                limit: 0,
            },
            not_key: false,
        }],
    );
    assert_eq!(keys(&blpop, "BLPOP a b 0").unwrap(), ["a", "b"]);
}

#[test]
fn keynum_counts_the_keys_and_keywords_find_where_they_begin() {
    let eval = info(
        -3,
        vec![KeySpec {
            begin: Begin::Index(2),
            find: Find::Keynum {
                count: 0,
                first: 1,
                step: 1,
            },
            not_key: false,
        }],
    );
    assert_eq!(keys(&eval, "EVAL s 2 a b c").unwrap(), ["a", "b"]);
    assert!(keys(&eval, "EVAL s x a").is_none(), "an unreadable count");
    // XREAD COUNT 2 STREAMS s1 s2 0 0: half of what follows STREAMS.
    let xread = info(
        -4,
        vec![KeySpec {
            begin: Begin::Keyword {
                keyword: b"streams".to_vec(),
                from: 1,
            },
            find: Find::Range {
                last: -1,
                step: 1,
                limit: 2,
            },
            not_key: false,
        }],
    );
    assert_eq!(
        keys(&xread, "XREAD COUNT 2 STREAMS s1 s2 0 0").unwrap(),
        ["s1", "s2"]
    );
}

#[test]
fn a_wrong_count_of_arguments_has_no_keys_and_unknown_specs_make_keys_unknown() {
    let get = info(
        2,
        vec![KeySpec {
            begin: Begin::Index(1),
            find: Find::Range {
                last: 0,
                step: 1,
                limit: 0,
            },
            not_key: false,
        }],
    );
    assert_eq!(keys(&get, "GET").unwrap(), Vec::<String>::new());
    let unknown = Info {
        arity: -1,
        specs: None,
        ..Info::default()
    };
    assert!(keys(&unknown, "WHATEVER a").is_none());
}

#[test]
fn scripting_commands_and_shard_channels_are_known_from_the_table() {
    let entry_with = |name: &str, categories: &[&str], specs: Vec<Value>| {
        let mut entry = entry(name, -2, &[], &[], specs, vec![]);
        if let Value::Array(items) = &mut entry {
            items[6] = list(categories.iter().map(|c| bulk(c)).collect());
        }
        entry
    };
    let channel_spec = list(vec![
        bulk("flags"),
        list(vec![bulk("not_key")]),
        bulk("begin_search"),
        list(vec![
            bulk("type"),
            bulk("index"),
            bulk("spec"),
            list(vec![bulk("index"), Value::Int(1)]),
        ]),
        bulk("find_keys"),
        list(vec![
            bulk("type"),
            bulk("range"),
            bulk("spec"),
            list(vec![
                bulk("lastkey"),
                Value::Int(0),
                bulk("keystep"),
                Value::Int(1),
                bulk("limit"),
                Value::Int(0),
            ]),
        ]),
    ]);
    let reply = list(vec![
        entry_with("eval", &["@slow", "@scripting"], vec![]),
        entry_with("get", &["@read", "@string"], vec![]),
        entry_with("spublish", &["@pubsub"], vec![channel_spec]),
    ]);
    let table = Table::from_reply(&reply).unwrap();
    assert!(table.get(b"EVAL").unwrap().flags.scripting);
    assert!(!table.get(b"get").unwrap().flags.scripting);
    let spublish = table.get(b"spublish").unwrap();
    assert_eq!(
        keys(spublish, "SPUBLISH ch msg").unwrap(),
        ["ch"],
        "placed by it"
    );
    assert_eq!(
        spublish.access_keys(&args("SPUBLISH ch msg")).unwrap(),
        Vec::<Bytes>::new(),
        "but it is no key"
    );
}
