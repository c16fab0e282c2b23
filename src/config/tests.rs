//! Merging, precedence and validation of the configuration.
use super::users::EMPTY_SHA256;
use super::*;
use clap::Parser;

fn load(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, Error> {
    let cli = Cli::try_parse_from(std::iter::once("redis-proxy").chain(args.iter().copied()))
        .expect("flags parse");
    Config::load_from(
        &cli,
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn defaults_match_the_documented_table() {
    let config = load(&[], &[]).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.redis_url.as_str(), "redis://127.0.0.1:6379");
    assert_eq!(config.cache_ttl, Duration::from_secs(60));
    assert_eq!(config.effective_max_parallel().get(), 1024);
}

#[test]
fn transparent_mode_is_off_unless_a_flag_or_the_environment_turns_it_on() {
    assert!(!load(&[], &[]).unwrap().forward_commands);
    assert!(load(&["--forward-commands"], &[]).unwrap().forward_commands);
    let from_env = load(
        &[],
        &[
            ("REDIS_PROXY_FORWARD_COMMANDS", "true"),
            ("REDIS_PROXY_MAX_DEDICATED_CONNECTIONS", "8"),
        ],
    )
    .unwrap();
    assert!(from_env.forward_commands);
    assert!(!from_env.forward_admin_commands);
    assert_eq!(from_env.max_dedicated_connections.get(), 8);
    let flag_wins = load(
        &["--forward-commands=false"],
        &[("REDIS_PROXY_FORWARD_COMMANDS", "true")],
    )
    .unwrap();
    assert!(!flag_wins.forward_commands);
}

#[test]
fn env_overrides_file_and_flag_overrides_env() {
    let dir = std::env::temp_dir().join(format!("redis-proxy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        "cache_ttl = \"10s\"\ncache_capacity = 7\nmax_clients = 3\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let from_file = load(&["--config", file], &[]).unwrap();
    assert_eq!(from_file.cache_ttl, Duration::from_secs(10));
    assert_eq!(from_file.cache_capacity.get(), 7);

    let env = [
        ("REDIS_PROXY_CACHE_TTL", "20s"),
        ("REDIS_PROXY_MAX_CLIENTS", "4"),
    ];
    let from_env = load(&["--config", file], &env).unwrap();
    assert_eq!(from_env.cache_ttl, Duration::from_secs(20));
    assert_eq!(from_env.max_clients.get(), 4);
    assert_eq!(from_env.cache_capacity.get(), 7);

    let from_flag = load(&["--config", file, "--cache-ttl", "30s"], &env).unwrap();
    assert_eq!(from_flag.cache_ttl, Duration::from_secs(30));
    assert_eq!(from_flag.max_clients.get(), 4);
}

#[test]
fn unrelated_prefixed_variables_are_ignored() {
    let config = load(&[], &[("REDIS_PROXY_PORT", "tcp://10.0.0.1:8080")]).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn zero_capacity_is_rejected_naming_the_option() {
    let err = load(&["--cache-capacity", "0"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--cache-capacity"), "{err}");
}

#[test]
fn bad_duration_in_env_names_the_variable() {
    let err = load(&[], &[("REDIS_PROXY_CACHE_TTL", "soon")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("REDIS_PROXY_CACHE_TTL"), "{err}");
}

#[test]
fn zero_timeout_is_rejected() {
    let err = load(&["--request-timeout", "0s"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--request-timeout"), "{err}");
}

#[test]
fn missing_file_is_an_error() {
    let err = load(&["--config", "/nonexistent/proxy.toml"], &[]).unwrap_err();
    assert!(matches!(err, Error::File { .. }), "{err}");
}

fn with_toml(name: &str, toml: &str) -> Result<Config, Error> {
    let dir =
        std::env::temp_dir().join(format!("redis-proxy-config-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(&file, toml).unwrap();
    load(&["--config", file.to_str().unwrap()], &[])
}

#[test]
fn users_are_read_from_toml_with_their_defaults() {
    let config = with_toml(
        "users",
        "[[users]]\nname = \"app\"\npassword = \"pw\"\nkeys = [\"app:*\"]\n\n\
         [[users]]\nname = \"ro\"\npassword_sha256 = \"30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4\"\n",
    )
    .unwrap();
    assert_eq!(config.users.len(), 2);
    assert_eq!(config.users[0].keys, ["app:*"]);
    assert_eq!(config.users[1].keys, ["*"]);
    assert!(config.users[1].enabled);
    assert!(config.requires_auth());
    assert!(
        !format!("{config:?}").contains("\"pw\""),
        "secrets are not in Debug"
    );
}

#[test]
fn bad_users_are_rejected_saying_which() {
    for (toml, problem) in [
        ("[[users]]\nname = \"a\"\n", "exactly one of password"),
        (
            "[[users]]\nname = \"a\"\npassword = \"x\"\npassword_sha256 = \"ab\"\n",
            "exactly one of password",
        ),
        (
            "[[users]]\nname = \"a\"\npassword_sha256 = \"xyz\"\n",
            "64 hexadecimal",
        ),
        (
            "[[users]]\nname = \"a b\"\npassword = \"x\"\n",
            "printable ASCII",
        ),
        (
            "[[users]]\nname = \"a\"\npassword = \"x\"\n[[users]]\nname = \"a\"\npassword = \"y\"\n",
            "a second user",
        ),
        ("[[users]]\nname = \"a\"\npasword = \"x\"\n", "[[users]]"),
    ] {
        let err = with_toml("bad-users", toml).unwrap_err().to_string();
        assert!(err.contains(problem), "{toml}: {err}");
    }
    for (name, toml) in [
        (
            "default-twice",
            "client_password = \"y\"\n[[users]]\nname = \"default\"\npassword = \"x\"\n",
        ),
        (
            "default-alone",
            "[[users]]\nname = \"default\"\npassword = \"x\"\n",
        ),
    ] {
        let err = with_toml(name, toml).unwrap_err().to_string();
        assert!(
            err.contains("user `default` is the one --client-password"),
            "{err}"
        );
    }
    for (name, toml) in [
        (
            "empty-password",
            "[[users]]\nname = \"a\"\npassword = \"\"\n",
        ),
        (
            "empty-digest",
            &format!("[[users]]\nname = \"a\"\npassword_sha256 = \"{EMPTY_SHA256}\"\n"),
        ),
    ] {
        let err = with_toml(name, toml).unwrap_err().to_string();
        assert!(err.contains("let anyone in"), "{name}: {err}");
    }
}

#[test]
fn a_password_of_digits_from_the_environment_stays_text() {
    let config = load(&[], &[("REDIS_PROXY_CLIENT_PASSWORD", "007")]).unwrap();
    assert_eq!(config.client_password.unwrap().expose(), "007");
    let empty = load(&[], &[("REDIS_PROXY_CLIENT_PASSWORD", "")]).unwrap();
    assert!(empty.client_password.is_none() && !empty.requires_auth());
}

#[test]
fn tls_files_go_in_pairs_and_backend_tls_needs_rediss() {
    let err = load(&["--tls-cert", "c.pem"], &[]).unwrap_err().to_string();
    assert!(err.contains("--tls-key"), "{err}");
    let err = load(&["--tls-client-ca", "ca.pem"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--tls-cert"), "{err}");
    let err = load(
        &["--redis-tls-key", "k.pem", "--redis-url", "rediss://h:1"],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--redis-tls-cert"), "{err}");
    let err = load(&["--redis-tls-ca", "ca.pem"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("rediss://"), "{err}");
    let ok = load(
        &["--redis-tls-ca", "ca.pem", "--redis-url", "rediss://h:1"],
        &[],
    )
    .unwrap();
    assert!(ok.redis_url.is_tls());
}

#[test]
fn bad_redis_url_is_rejected() {
    let err = load(&["--redis-url", "http://example"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--redis-url"), "{err}");
}

/// The keys `config/proxy.toml` sets, and those it names in a comment.
fn example_keys() -> (Vec<String>, Vec<String>) {
    let text = include_str!("../../config/proxy.toml");
    let key = |line: &str| {
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        key.chars()
            .all(|c| c.is_ascii_lowercase() || c == '_')
            .then(|| key.to_owned())
    };
    let set = text.lines().filter_map(key).collect();
    let commented = text
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter_map(key)
        .collect();
    (set, commented)
}

#[test]
fn the_example_file_yields_the_defaults_and_names_every_key() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/proxy.toml");
    assert_eq!(load(&["--config", path], &[]).unwrap(), Config::default());

    let (set, commented) = example_keys();
    // Every key with a default of its own is set to it; every other key is
    // named, commented out.
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    let mut with_default: Vec<&String> = defaults
        .keys()
        .filter(|k| *k != "users" && *k != "cache_rules")
        .collect();
    with_default.sort();
    let mut set_sorted: Vec<&String> = set.iter().collect();
    set_sorted.sort();
    assert_eq!(set_sorted, with_default);
    for key in Config::KEYS {
        assert!(
            set.iter().chain(&commented).any(|k| k == key),
            "config/proxy.toml does not name `{key}`"
        );
    }
    assert!(include_str!("../../config/proxy.toml").contains("# [[users]]"));
}

#[test]
fn the_keys_list_is_every_field_of_the_configuration() {
    let mut everything = Config {
        cache_max_bytes: Some(ByteSize::mib(1)),
        cache_max_value_bytes: Some(ByteSize::mib(1)),
        max_parallel: NonZeroUsize::new(1),
        max_connections: NonZeroUsize::new(1),
        worker_threads: NonZeroUsize::new(1),
        client_password: Some("x".parse().unwrap()),
        tls_cert: Some("c".into()),
        tls_key: Some("k".into()),
        tls_client_ca: Some("a".into()),
        redis_tls_ca: Some("a".into()),
        redis_tls_cert: Some("c".into()),
        redis_tls_key: Some("k".into()),
        sentinel_master: Some("m".into()),
        sentinel_password: Some("x".parse().unwrap()),
        shard_hash_tag: Some("{}".into()),
        shard_redis_auth: Some("x".parse().unwrap()),
        twemproxy_config: Some("n.yml".into()),
        twemproxy_pool: Some("p".into()),
        ..Config::default()
    };
    everything.users.clear();
    let table = toml::Table::try_from(&everything).unwrap();
    let mut fields: Vec<&str> = table
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "users" && *k != "cache_rules")
        .collect();
    let mut keys = Config::KEYS.to_vec();
    fields.sort_unstable();
    keys.sort_unstable();
    assert_eq!(fields, keys);
}

#[test]
fn print_config_reads_back_as_the_same_configuration() {
    let config = load(
        &[
            "--cache-ttl",
            "30s",
            "--redis-url",
            "redis://u:pw@10.0.0.1:7000/2",
        ],
        &[],
    )
    .unwrap();
    let printed = config.to_toml();
    assert!(
        printed.contains("redis_url = \"redis://u:***@10.0.0.1:7000/2\""),
        "{printed}"
    );
    assert!(printed.contains("cache_ttl = \"30s\""), "{printed}");
    assert!(printed.contains("# cache_max_bytes = \""), "{printed}");
    let dir = std::env::temp_dir().join(format!("print-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("printed.toml");
    std::fs::write(&file, printed.replace("u:***@", "u:pw@")).unwrap();
    let read = load(&["--config", file.to_str().unwrap()], &[]).unwrap();
    assert_eq!(read, config);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn errors_speak_of_the_user_s_words_not_rust_types() {
    let dir = std::env::temp_dir().join(format!("config-words-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let typo = file("typo.toml", "cache_tll = \"5s\"\n");
    let err = load(&["--config", &typo], &[]).unwrap_err().to_string();
    assert!(
        err.contains("unknown key `cache_tll`; did you mean `cache_ttl`?"),
        "{err}"
    );
    assert!(!err.contains("redis_url"), "no list of every key: {err}");

    let err = load(&[], &[("REDIS_PROXY_CACHE_CAPACITY", "0")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`0` is not a whole number of at least 1"),
        "{err}"
    );
    assert!(
        !err.contains("usize") && !err.contains("unsigned int"),
        "{err}"
    );

    let variant = file("variant.toml", "invalidation = \"x\"\n");
    let err = load(&["--config", &variant], &[]).unwrap_err().to_string();
    assert!(err.contains("`x` is not one of: none, tracking"), "{err}");
    assert!(!err.contains("``"), "{err}");

    let user = file("user.toml", "[[users]]\nname = \"a\"\npasword = \"x\"\n");
    let err = load(&["--config", &user], &[]).unwrap_err().to_string();
    assert!(err.contains("did you mean `password`?"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cache_rules_are_read_from_toml_and_bad_ones_name_their_index() {
    let config = with_toml(
        "rules",
        "cache_stale_if_error = \"1m\"\n\
         [[cache_rules]]\npattern = \"session:*\"\nttl = \"5s\"\nstale_while_revalidate = \"2s\"\n\n\
         [[cache_rules]]\npattern = \"rate:*\"\ncache = false\nmax_value_bytes = \"1kb\"\n",
    )
    .unwrap();
    assert_eq!(config.cache_stale_if_error, Duration::from_secs(60));
    assert_eq!(config.cache_rules.len(), 2);
    assert_eq!(config.cache_rules[0].ttl, Some(Duration::from_secs(5)));
    assert_eq!(config.cache_rules[0].stale_if_error, None);
    assert!(config.cache_rules[0].cache);
    assert!(!config.cache_rules[1].cache);
    assert_eq!(config.cache_rules[1].max_value_bytes, Some(ByteSize(1024)));
    for (toml, problem) in [
        (
            "[[cache_rules]]\nttl = \"5s\"\n",
            "rule 0: `pattern` is missing",
        ),
        (
            "[[cache_rules]]\npattern = \"a\"\n[[cache_rules]]\npattern = \"b\"\ntll = \"5s\"\n",
            "rule 1: unknown key `tll`; did you mean `ttl`?",
        ),
        (
            "[[cache_rules]]\npattern = \"a\"\nttl = \"soon\"\n",
            "rule 0:",
        ),
        (
            "[[cache_rules]]\npattern = \"a\"\nttl = \"0s\"\n",
            "rule 0 (pattern `a`): `ttl` must be greater than zero",
        ),
    ] {
        let err = with_toml("bad-rules", toml).unwrap_err().to_string();
        assert!(err.contains("cache_rules"), "{toml}: {err}");
        assert!(err.contains(problem), "{toml}: {err}");
    }
}

#[test]
fn a_sharded_pool_is_read_from_flags_as_from_toml() {
    let config = load(
        &[
            "--redis-mode",
            "sharded",
            "--shard-servers",
            "10.0.0.1:6379:1 one, 10.0.0.2:6379:2",
            "--shard-hash",
            "murmur",
            "--shard-hash-tag",
            "{}",
        ],
        &[],
    )
    .unwrap();
    let (servers, placement) = config.shard_pool().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!((servers[0].name.as_str(), servers[1].weight), ("one", 2));
    assert_eq!(placement.hash, KeyHash::Murmur);
    assert_eq!(placement.hash_tag, Some(*b"{}"));
    let err = load(&["--redis-mode", "sharded"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("shard_servers"), "{err}");
    let err = load(&["--redis-mode", "sharded", "--shard-servers", "x:1"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("host:port:weight"), "{err}");
    let err = load(&["--redis-mode", "sentinel"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--sentinel-master"), "{err}");
}
