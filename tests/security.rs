//! Client authentication, per-user key permissions and TLS on every hop, as
//! Redis clients, HTTP clients and a TLS-only Redis see them.
//!
//! Certificates are made at test time (`support::Pki`, rcgen).

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{Pki, Proxy, ProxyBuilder, RawConn, RedisServer, TlsRedisServer, tls_connect};

const DEFAULT_PASSWORD: &str = "pw-default";
const APP_PASSWORD: &str = "pw-app";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A TOML file with user `app` (reads `app:*`), a disabled user `off`, and
/// user `hashed` given by the SHA-256 of its password (`pw-hashed`).
fn users_file(dir: &Path) -> PathBuf {
    let path = dir.join("users.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[users]]
name = "app"
password = "{APP_PASSWORD}"
keys = ["app:*"]

[[users]]
name = "off"
password = "pw-off"
enabled = false

[[users]]
name = "hashed"
password_sha256 = "{}"
keys = ["h:*", "app:1"]
"#,
            sha256_hex("pw-hashed")
        ),
    )
    .expect("write the users file");
    path
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "redis-proxy-security-{}-{name}-{}",
        std::process::id(),
        support::free_port()
    ));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Redis with app:1, other:1 and h:1, and a proxy in front of it with the
/// default user's password and the users of [`users_file`].
fn secured(extra: impl FnOnce(ProxyBuilder) -> ProxyBuilder) -> (RedisServer, Proxy, PathBuf) {
    let redis = RedisServer::start();
    redis.set("app:1", "one");
    redis.set("other:1", "secret");
    redis.set("h:1", "hashed-one");
    let dir = scratch("secured");
    let builder = ProxyBuilder::new(&redis.url())
        .env("REDIS_PROXY_CLIENT_PASSWORD", DEFAULT_PASSWORD)
        .arg("--config", users_file(&dir).display());
    let proxy = extra(builder).start();
    (redis, proxy, dir)
}

fn resp(proxy: &Proxy) -> RawConn {
    RawConn::connect(proxy.resp_addr())
}

/// Sends one command (as a RESP array) and reads its reply.
fn command(conn: &mut RawConn, args: &[&str]) -> String {
    let mut frame = format!("*{}\r\n", args.len());
    for arg in args {
        frame.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    conn.send(frame.as_bytes());
    conn.read_reply()
}

const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const NOPERM: &str = "-NOPERM No permissions to access a key\r\n";

/// An HTTP/1.1 GET over a plain socket with extra header lines: the status,
/// the head and the body.
fn http(addr: std::net::SocketAddr, path: &str, headers: &[&str]) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    http_over(&mut stream, path, headers)
}

fn http_over(stream: &mut impl ReadWrite, path: &str, headers: &[&str]) -> (u16, String, String) {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_owned(), body.to_owned())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}")
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// --- RESP -------------------------------------------------------------------------

#[test]
fn before_auth_only_auth_hello_quit_and_reset_are_served() {
    let (redis, proxy, _dir) = secured(|b| b);
    let gets = redis.calls("get");
    let mut conn = resp(&proxy);
    assert_eq!(command(&mut conn, &["GET", "app:1"]), NOAUTH);
    assert_eq!(command(&mut conn, &["PING"]), NOAUTH);
    assert_eq!(command(&mut conn, &["MGET", "app:1"]), NOAUTH);
    assert_eq!(command(&mut conn, &["CLIENT", "ID"]), NOAUTH);
    assert_eq!(command(&mut conn, &["INFO"]), NOAUTH);
    // Errors of the request itself come first, as with Redis.
    assert!(command(&mut conn, &["GET"]).starts_with("-ERR wrong number of arguments"));
    // HELLO without credentials answers; it does not authenticate.
    assert!(command(&mut conn, &["HELLO", "2"]).starts_with("*14\r\n"));
    assert_eq!(command(&mut conn, &["GET", "app:1"]), NOAUTH);
    assert_eq!(command(&mut conn, &["RESET"]), "+RESET\r\n");
    assert_eq!(command(&mut conn, &["AUTH", "wrong"]), WRONGPASS);
    assert_eq!(command(&mut conn, &["GET", "app:1"]), NOAUTH);
    assert_eq!(command(&mut conn, &["AUTH", DEFAULT_PASSWORD]), "+OK\r\n");
    assert_eq!(command(&mut conn, &["GET", "app:1"]), "$3\r\none\r\n");
    assert_eq!(command(&mut conn, &["PING"]), "+PONG\r\n");
    // RESET forgets who the client was.
    assert_eq!(command(&mut conn, &["RESET"]), "+RESET\r\n");
    assert_eq!(command(&mut conn, &["GET", "app:1"]), NOAUTH);
    assert_eq!(command(&mut conn, &["QUIT"]), "+OK\r\n");
    assert_eq!(
        redis.calls("get"),
        gets + 1,
        "only the authenticated GET reached Redis"
    );
}

#[test]
fn hello_with_auth_authenticates_and_switches_protocol_in_one_step() {
    let (_redis, proxy, _dir) = secured(|b| b);
    let mut conn = resp(&proxy);
    // Wrong credentials: refused, and the connection stays in RESP2.
    assert_eq!(
        command(&mut conn, &["HELLO", "3", "AUTH", "app", "nope"]),
        WRONGPASS
    );
    assert_eq!(command(&mut conn, &["GET", "app:1"]), NOAUTH);
    let hello = command(&mut conn, &["HELLO", "3", "AUTH", "app", APP_PASSWORD]);
    assert!(hello.starts_with("%7\r\n"), "a RESP3 map: {hello:?}");
    assert_eq!(command(&mut conn, &["GET", "app:1"]), "$3\r\none\r\n");
    // RESP3's null for a missing key proves the switch.
    assert_eq!(command(&mut conn, &["GET", "app:missing"]), "_\r\n");
    let info = command(&mut conn, &["CLIENT", "INFO"]);
    assert!(info.contains(" user=app "), "{info}");
}

#[test]
fn a_user_reads_only_keys_matching_its_patterns_and_mget_is_refused_whole() {
    let (redis, proxy, _dir) = secured(|b| b);
    let mut conn = resp(&proxy);
    assert_eq!(
        command(&mut conn, &["AUTH", "app", APP_PASSWORD]),
        "+OK\r\n"
    );
    assert_eq!(command(&mut conn, &["GET", "app:1"]), "$3\r\none\r\n");
    let gets = redis.calls("get") + redis.calls("mget");
    assert_eq!(command(&mut conn, &["GET", "other:1"]), NOPERM);
    assert_eq!(command(&mut conn, &["MGET", "app:1", "other:1"]), NOPERM);
    assert_eq!(
        redis.calls("get") + redis.calls("mget"),
        gets,
        "a denied read never reaches Redis"
    );
    assert_eq!(
        command(&mut conn, &["MGET", "app:1", "app:2"]),
        "*2\r\n$3\r\none\r\n$-1\r\n"
    );

    let mut hashed = resp(&proxy);
    assert_eq!(
        command(&mut hashed, &["AUTH", "hashed", "pw-hashed"]),
        "+OK\r\n"
    );
    assert_eq!(
        command(&mut hashed, &["GET", "h:1"]),
        "$10\r\nhashed-one\r\n"
    );
    assert_eq!(command(&mut hashed, &["GET", "app:1"]), "$3\r\none\r\n");
    assert_eq!(command(&mut hashed, &["GET", "app:2"]), NOPERM);

    let mut off = resp(&proxy);
    assert_eq!(command(&mut off, &["AUTH", "off", "pw-off"]), WRONGPASS);
    assert_eq!(command(&mut off, &["AUTH", "nobody", "pw-off"]), WRONGPASS);
}

#[test]
fn a_denied_read_looks_the_same_for_cached_absent_and_uncached_keys() {
    let (redis, proxy, _dir) = secured(|b| b);
    redis.set("other:cached", "x");
    // The default user caches other:cached; app then asks for it, for a key that
    // exists but is not cached, and for one that does not exist.
    let mut admin = resp(&proxy);
    assert_eq!(command(&mut admin, &["AUTH", DEFAULT_PASSWORD]), "+OK\r\n");
    assert_eq!(command(&mut admin, &["GET", "other:cached"]), "$1\r\nx\r\n");
    let mut app = resp(&proxy);
    assert_eq!(command(&mut app, &["AUTH", "app", APP_PASSWORD]), "+OK\r\n");
    let auth = basic("app", APP_PASSWORD);
    for key in ["other:cached", "other:1", "other:none"] {
        assert_eq!(command(&mut app, &["GET", key]), NOPERM, "{key}");
        let (status, head, _) = http(proxy.http_addr(), &format!("/{key}"), &[&auth]);
        assert_eq!(status, 403, "{key}");
        assert!(!head.to_ascii_lowercase().contains("x-cache"), "{head}");
    }
}

#[test]
fn auth_without_configured_users_is_accepted_as_before() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = resp(&proxy);
    assert_eq!(command(&mut conn, &["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(command(&mut conn, &["AUTH", "anything"]), "+OK\r\n");
    assert_eq!(command(&mut conn, &["AUTH", "user", "anything"]), "+OK\r\n");
    assert!(command(&mut conn, &["HELLO", "3", "AUTH", "u", "p"]).starts_with("%7\r\n"));
    assert_eq!(http(proxy.http_addr(), "/k", &[]).0, 200);
}

// --- HTTP -------------------------------------------------------------------------

#[test]
fn http_takes_basic_and_bearer_credentials_and_answers_401_and_403() {
    let (_redis, proxy, _dir) = secured(|b| b);
    let addr = proxy.http_addr();

    let (status, head, _) = http(addr, "/app:1", &[]);
    assert_eq!(status, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"redis-proxy\""),
        "{head}"
    );
    for wrong in [
        basic("app", "nope"),
        basic("off", "pw-off"),
        "Authorization: Bearer nope".to_owned(),
        "Authorization: Basic !!!not-base64".to_owned(),
        "Authorization: Digest x".to_owned(),
    ] {
        let (status, head, _) = http(addr, "/app:1", &[&wrong]);
        assert_eq!(status, 401, "{wrong}");
        assert!(
            head.to_ascii_lowercase().contains("www-authenticate"),
            "{wrong}"
        );
    }

    let (status, _, body) = http(addr, "/app:1", &[&basic("app", APP_PASSWORD)]);
    assert_eq!((status, body.as_str()), (200, "one"));
    assert_eq!(
        http(addr, "/other:1", &[&basic("app", APP_PASSWORD)]).0,
        403
    );
    let bearer = format!("Authorization: Bearer {DEFAULT_PASSWORD}");
    let (status, _, body) = http(addr, "/other:1", &[&bearer]);
    assert_eq!((status, body.as_str()), (200, "secret"));
    let (status, _, body) = http(addr, "/other:1", &[&basic("default", DEFAULT_PASSWORD)]);
    assert_eq!((status, body.as_str()), (200, "secret"));
}

#[test]
fn curl_authenticates_with_user_and_password_and_with_a_bearer_token() {
    let (_redis, proxy, _dir) = secured(|b| b);
    let url = proxy.url("app:1");
    let as_app = run(Command::new("curl").args(["-s", "-u", &format!("app:{APP_PASSWORD}"), &url]));
    assert_eq!(stdout(&as_app), "one");
    let bearer = run(Command::new("curl").args([
        "-s",
        "-H",
        &format!("Authorization: Bearer {DEFAULT_PASSWORD}"),
        &proxy.url("other:1"),
    ]));
    assert_eq!(stdout(&bearer), "secret");
    let denied = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-u",
        &format!("app:{APP_PASSWORD}"),
        &proxy.url("other:1"),
    ]));
    assert_eq!(stdout(&denied), "403");
}

// --- failures are logged and counted, secrets never ---------------------------------

#[test]
fn failures_are_logged_with_client_and_user_and_counted_per_protocol() {
    let (_redis, proxy, _dir) = secured(|b| b);
    let mut conn = resp(&proxy);
    assert_eq!(command(&mut conn, &["AUTH", "app", "nope"]), WRONGPASS);
    assert_eq!(
        http(proxy.http_addr(), "/app:1", &[&basic("mallory", "x")]).0,
        401
    );
    assert!(support::wait_until(Duration::from_secs(5), || {
        proxy
            .logs()
            .iter()
            .filter(|line| line.contains("authentication failed"))
            .count()
            >= 2
    }));
    let failures: Vec<serde_json::Value> = proxy
        .logs()
        .iter()
        .filter(|line| line.contains("authentication failed"))
        .map(|line| serde_json::from_str(line).expect("a JSON log line"))
        .collect();
    let resp_failure = failures
        .iter()
        .find(|line| line["fields"]["protocol"] == "resp")
        .expect("the RESP failure is logged");
    assert_eq!(resp_failure["level"], "WARN");
    assert_eq!(resp_failure["fields"]["user"], "app");
    assert!(
        resp_failure["fields"]["client"]
            .as_str()
            .is_some_and(|client| client.starts_with("127.0.0.1:")),
        "{resp_failure}"
    );
    let http_failure = failures
        .iter()
        .find(|line| line["fields"]["protocol"] == "http")
        .expect("the HTTP failure is logged");
    assert_eq!(http_failure["fields"]["user"], "mallory");
    let (_, metrics) = support::http_get(proxy.admin_addr(), "/metrics");
    for protocol in ["resp", "http"] {
        let line = format!("redis_proxy_auth_failures_total{{protocol=\"{protocol}\"}} 1");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}

#[test]
fn no_password_appears_in_any_log_line_even_at_trace_level() {
    let (_redis, proxy, _dir) = secured(|b| {
        b.env("RUST_LOG", "trace")
            .arg("--client-password", DEFAULT_PASSWORD)
    });
    let mut conn = resp(&proxy);
    command(&mut conn, &["AUTH", "app", "typo-pw-app"]);
    command(&mut conn, &["AUTH", "app", APP_PASSWORD]);
    command(
        &mut conn,
        &["HELLO", "3", "AUTH", "default", DEFAULT_PASSWORD],
    );
    command(&mut conn, &["GET", "app:1"]);
    http(proxy.http_addr(), "/app:1", &[&basic("app", APP_PASSWORD)]);
    http(proxy.http_addr(), "/app:1", &[&basic("app", "typo-pw-app")]);
    let bearer = format!("Authorization: Bearer {DEFAULT_PASSWORD}");
    http(proxy.http_addr(), "/app:1", &[&bearer]);
    std::thread::sleep(Duration::from_millis(300));
    let logs = proxy.logs();
    assert!(logs.iter().any(|l| l.contains("authentication failed")));
    let startup = logs
        .iter()
        .find(|l| l.contains("\"listening\""))
        .expect("the startup line");
    assert!(startup.contains("\"client_password\":\"***\""), "{startup}");
    let encoded = basic("app", APP_PASSWORD);
    let encoded = encoded.trim_start_matches("Authorization: Basic ");
    for secret in [
        DEFAULT_PASSWORD,
        APP_PASSWORD,
        "typo-pw-app",
        "pw-off",
        encoded,
    ] {
        for line in &logs {
            assert!(!line.contains(secret), "{secret:?} logged: {line}");
        }
    }
}

// --- real clients -----------------------------------------------------------------

#[test]
fn redis_cli_authenticates_with_a_password_and_with_user_and_pass() {
    let (_redis, proxy, _dir) = secured(|b| b);
    let port = proxy.resp_addr().port().to_string();
    let cli = |args: &[&str]| {
        let output = run(Command::new("redis-cli")
            .args(["--no-auth-warning", "-h", "127.0.0.1", "-p", &port])
            .args(args));
        stdout(&output)
    };
    assert_eq!(cli(&["-a", DEFAULT_PASSWORD, "GET", "other:1"]), "secret\n");
    assert_eq!(
        cli(&["--user", "app", "--pass", APP_PASSWORD, "GET", "app:1"]),
        "one\n"
    );
    assert!(
        cli(&["--user", "app", "--pass", APP_PASSWORD, "GET", "other:1"]).contains("NOPERM"),
        "a key outside app:*"
    );
    assert!(cli(&["GET", "app:1"]).contains("NOAUTH"));
    assert!(cli(&["-a", "wrong", "GET", "app:1"]).contains("NOAUTH"));
}

fn python_check(port: u16, ca: Option<&Path>) -> String {
    let mut command = Command::new("python3");
    command
        .arg(manifest_dir().join("tests/clients/redis_py_security.py"))
        .arg(port.to_string())
        .env("PYTHONPATH", support::python_path());
    if let Some(ca) = ca {
        command.arg(ca);
    }
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

#[test]
fn redis_py_authenticates_with_password_and_username_over_resp2_and_resp3() {
    let (_redis, proxy, _dir) = secured(|b| b);
    let text = python_check(proxy.resp_addr().port(), None);
    assert!(
        text.contains("protocol 2: ok") && text.contains("protocol 3: ok"),
        "{text}"
    );
}

#[test]
fn ioredis_and_node_redis_authenticate_with_username_and_password() {
    let (_redis, proxy, _dir) = secured(|b| b);
    let dir = manifest_dir().join("tests/clients");
    assert!(
        dir.join("node_modules/ioredis").exists(),
        "ioredis and node-redis are not installed: run `make clients`"
    );
    let output = run(Command::new("node")
        .arg(dir.join("node_security.mjs"))
        .arg(proxy.resp_addr().port().to_string()));
    let text = stdout(&output);
    assert!(
        output.status.success() && text.contains("ioredis: ok") && text.contains("node-redis: ok"),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// --- TLS on the listeners -----------------------------------------------------------

/// Redis with k = v, and a proxy whose listeners speak TLS with `pki`'s server
/// certificate.
fn tls_proxy(pki: &Pki, extra: impl FnOnce(ProxyBuilder) -> ProxyBuilder) -> (RedisServer, Proxy) {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let builder = ProxyBuilder::new(&redis.url())
        .arg("--tls-cert", pki.server_cert().display())
        .arg("--tls-key", pki.server_key().display())
        .arg("--request-timeout", "2s");
    (redis, extra(builder).start())
}

fn curl_https(url: &str, ca: &Path, extra: &[&str]) -> Output {
    run(Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(extra)
        .arg(url))
}

#[test]
fn tls_listeners_serve_https_and_resp_over_tls() {
    let pki = Pki::new("listeners");
    let (_redis, proxy) = tls_proxy(&pki, |b| b);
    let https = format!("https://127.0.0.1:{}/k", proxy.http_addr().port());
    let output = curl_https(&https, &pki.ca(), &[]);
    assert_eq!(stdout(&output), "v", "{output:?}");
    let localhost = format!("https://localhost:{}/k", proxy.http_addr().port());
    assert_eq!(stdout(&curl_https(&localhost, &pki.ca(), &[])), "v");

    let port = proxy.resp_addr().port().to_string();
    let cli = run(Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "--tls", "--cacert"])
        .arg(pki.ca())
        .args(["GET", "k"]));
    assert_eq!(stdout(&cli), "v\n", "{cli:?}");

    // A client that does not trust the certificate's CA refuses it.
    let stranger = Pki::new("stranger");
    let untrusted = curl_https(&https, &stranger.ca(), &[]);
    assert!(!untrusted.status.success());
}

#[test]
fn plaintext_clients_on_tls_ports_are_closed_at_once() {
    let pki = Pki::new("plaintext");
    let (_redis, proxy) = tls_proxy(&pki, |b| b);
    for addr in [proxy.http_addr(), proxy.resp_addr()] {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let start = Instant::now();
        stream
            .write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "closed promptly, not after a timeout ({:?})",
            start.elapsed()
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            !answer.contains("$1\r\nv") && !answer.contains("HTTP/1.1"),
            "no answer in the clear: {answer:?}"
        );
    }
    // The proxy is still serving.
    let https = format!("https://127.0.0.1:{}/k", proxy.http_addr().port());
    assert_eq!(stdout(&curl_https(&https, &pki.ca(), &[])), "v");
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_closed_within_the_request_timeout() {
    let pki = Pki::new("slow-handshake");
    let (_redis, proxy) = tls_proxy(&pki, |b| b);
    let mut stream = std::net::TcpStream::connect(proxy.resp_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut byte = [0u8; 1];
    let read = stream.read(&mut byte);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the proxy closes the silent connection: {read:?}"
    );
    // --request-timeout 2s bounds the handshake.
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn mutual_tls_accepts_a_signed_client_certificate_and_refuses_others() {
    let pki = Pki::new("mtls");
    let (cert, key) = pki.client("app-client");
    let stranger = Pki::new("mtls-stranger");
    let (bad_cert, bad_key) = stranger.client("intruder");
    let (_redis, proxy) = tls_proxy(&pki, |b| b.arg("--tls-client-ca", pki.ca().display()));
    let https = format!("https://127.0.0.1:{}/k", proxy.http_addr().port());

    let good = curl_https(
        &https,
        &pki.ca(),
        &[
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
    );
    assert_eq!(stdout(&good), "v", "{good:?}");
    let without = curl_https(&https, &pki.ca(), &[]);
    assert!(
        !without.status.success(),
        "no client certificate: {without:?}"
    );
    let wrong = curl_https(
        &https,
        &pki.ca(),
        &[
            "--cert",
            &bad_cert.display().to_string(),
            "--key",
            &bad_key.display().to_string(),
        ],
    );
    assert!(
        !wrong.status.success(),
        "a certificate of another CA: {wrong:?}"
    );

    // RESP over mutual TLS, with and without a certificate.
    let mut good =
        tls_connect(proxy.resp_addr(), &pki.ca(), Some((&cert, &key))).expect("handshake");
    good.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
    let mut reply = [0u8; 7];
    good.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"$1\r\nv\r\n");
    let refused = tls_connect(proxy.resp_addr(), &pki.ca(), None).and_then(|mut conn| {
        conn.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")?;
        let mut reply = [0u8; 7];
        conn.read_exact(&mut reply)
    });
    assert!(
        refused.is_err(),
        "a client without a certificate gets no reply"
    );
}

#[test]
fn redis_py_reads_over_tls_with_authentication() {
    let pki = Pki::new("py-tls");
    let (_redis, proxy, _dir) = secured(|b| {
        b.arg("--tls-cert", pki.server_cert().display())
            .arg("--tls-key", pki.server_key().display())
    });
    let text = python_check(proxy.resp_addr().port(), Some(&pki.ca()));
    assert!(
        text.contains("protocol 2 tls: ok") && text.contains("protocol 3 tls: ok"),
        "{text}"
    );
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_keeps_old_ones() {
    let first = Pki::new("reload-first");
    let second = Pki::new("reload-second");
    let dir = scratch("reload");
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::copy(first.server_cert(), &cert).unwrap();
    std::fs::copy(first.server_key(), &key).unwrap();
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--tls-cert", cert.display())
        .arg("--tls-key", key.display())
        .start();

    // An established connection, before the reload.
    let mut old = tls_connect(proxy.resp_addr(), &first.ca(), None).expect("first certificate");
    old.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut pong = [0u8; 7];
    old.read_exact(&mut pong).unwrap();

    let (new_cert, new_key) = second.server("renewed", 2041);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        support::wait_until(Duration::from_secs(5), || proxy
            .logs()
            .iter()
            .any(|l| l.contains("TLS certificate and key reloaded")
                && l.contains("2041-01-01 00:00:00 UTC"))),
        "the reload and the new expiry are logged:\n{}",
        proxy.logs().join("\n")
    );

    let mut new = tls_connect(proxy.resp_addr(), &second.ca(), None).expect("the new certificate");
    new.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
    let mut reply = [0u8; 7];
    new.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"$1\r\nv\r\n");
    assert!(
        tls_connect(proxy.resp_addr(), &first.ca(), None).is_err(),
        "new connections no longer get the old certificate"
    );
    // The old connection still works on its session.
    old.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
    old.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"$1\r\nv\r\n");

    // A reload that fails keeps the certificate in use.
    std::fs::write(&key, "not a key").unwrap();
    Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(support::wait_until(Duration::from_secs(5), || proxy
        .logs()
        .iter()
        .any(|l| l.contains("TLS reload failed"))));
    assert!(tls_connect(proxy.resp_addr(), &second.ca(), None).is_ok());
}

#[test]
fn unusable_tls_files_stop_the_proxy_at_startup_naming_the_option() {
    let pki = Pki::new("startup");
    let redis = RedisServer::start();
    let missing = pki.dir().join("missing.pem");
    let not_pem = pki.dir().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let (other_cert, _) = pki.server("other", 2035);
    let cases: Vec<(Vec<(&str, PathBuf)>, &str)> = vec![
        (
            vec![
                ("--tls-cert", missing.clone()),
                ("--tls-key", pki.server_key()),
            ],
            "--tls-cert",
        ),
        (
            vec![
                ("--tls-cert", pki.server_cert()),
                ("--tls-key", not_pem.clone()),
            ],
            "--tls-key",
        ),
        (
            // A key that is not the certificate's.
            vec![("--tls-cert", other_cert), ("--tls-key", pki.server_key())],
            "--tls-key",
        ),
        (vec![("--tls-cert", pki.server_cert())], "--tls-key"),
        (
            vec![
                ("--tls-cert", pki.server_cert()),
                ("--tls-key", pki.server_key()),
                ("--tls-client-ca", not_pem.clone()),
            ],
            "--tls-client-ca",
        ),
        (vec![("--redis-tls-ca", pki.ca())], "rediss://"),
    ];
    for (args, named) in cases {
        let mut builder = ProxyBuilder::new(&redis.url());
        for (flag, path) in &args {
            builder = builder.arg(flag, path.display());
        }
        let output = builder.run_to_exit(Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must not start");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

// --- TLS to the backing Redis -------------------------------------------------------

#[test]
fn the_backend_can_be_a_tls_only_redis_with_and_without_client_certificates() {
    let pki = Pki::new("backend");
    let (cert, key) = pki.client("proxy");
    for auth_clients in [false, true] {
        let redis = TlsRedisServer::start(&pki, auth_clients);
        redis.cli(&["SET", "k", "over-tls"]);
        let mut builder = ProxyBuilder::new(&redis.url()).arg("--redis-tls-ca", pki.ca().display());
        if auth_clients {
            builder = builder
                .arg("--redis-tls-cert", cert.display())
                .arg("--redis-tls-key", key.display());
        }
        let proxy = builder.start();
        let (status, _, body) = http(proxy.http_addr(), "/k", &[]);
        assert_eq!(
            (status, body.as_str()),
            (200, "over-tls"),
            "auth_clients {auth_clients}"
        );
        assert!(support::wait_until(Duration::from_secs(5), || {
            support::http_get(proxy.admin_addr(), "/readyz").0 == 200
        }));
        if auth_clients {
            // Without a client certificate the same Redis refuses the proxy.
            let refused = ProxyBuilder::new(&redis.url())
                .arg("--redis-tls-ca", pki.ca().display())
                .start();
            let (status, _, body) = http(refused.http_addr(), "/k", &[]);
            assert_eq!(status, 502, "{body}");
            assert_eq!(support::http_get(refused.admin_addr(), "/readyz").0, 503);
        }
    }
    // A proxy that does not trust Redis's CA does not talk to it.
    let redis = TlsRedisServer::start(&pki, false);
    let stranger = Pki::new("backend-stranger");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--redis-tls-ca", stranger.ca().display())
        .start();
    let (status, _, body) = http(proxy.http_addr(), "/k", &[]);
    assert_eq!(status, 502, "{body}");
}

#[test]
fn invalidation_tracking_works_over_tls() {
    let pki = Pki::new("tracking");
    let redis = TlsRedisServer::start(&pki, false);
    redis.cli(&["SET", "k", "old"]);
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--redis-tls-ca", pki.ca().display())
        .arg("--invalidation", "tracking")
        .arg("--cache-ttl", "1h")
        .start();
    assert_eq!(http(proxy.http_addr(), "/k", &[]).2, "old");
    redis.cli(&["SET", "k", "new"]);
    assert!(
        support::wait_until(Duration::from_secs(5), || http(
            proxy.http_addr(),
            "/k",
            &[]
        )
        .2 == "new"),
        "the write is seen through tracking over TLS"
    );
    assert_eq!(support::http_get(proxy.admin_addr(), "/readyz").0, 200);
}
