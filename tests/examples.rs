//! The library examples build (they are targets of `make test`) and run: each is
//! started as a process and used over HTTP.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use support::RedisServer;

/// `target/<profile>/examples/<name>`, next to this test's own `deps` folder.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --examples`",
        path.display()
    );
    path
}

/// A running example, killed on drop.
struct Example {
    child: Child,
    addr: SocketAddr,
}

impl Example {
    fn start(name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(example_binary(name))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the example");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the example's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("an address");
        Self { child, addr }
    }

    async fn get(&self, path: &str) -> (u16, Option<String>, String) {
        let response = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap();
        let cache = response
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            response.status().as_u16(),
            cache,
            response.text().await.unwrap(),
        )
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn embed_in_axum_serves_its_routes_and_the_cache_under_a_prefix() {
    let redis = RedisServer::start();
    redis.set("user:1", "Ada");
    let app = Example::start("embed_in_axum", &[&redis.url(), "127.0.0.1:0"]);

    assert_eq!(app.get("/").await.2, "the application's own page\n");
    assert_eq!(
        app.get("/cache/user:1").await,
        (200, Some("MISS".into()), "Ada".into())
    );
    redis.set("user:1", "changed");
    assert_eq!(
        app.get("/cache/user:1").await,
        (200, Some("HIT".into()), "Ada".into())
    );
    assert_eq!(app.get("/cache/nobody").await.0, 404);
}

#[tokio::test]
async fn wrap_own_backend_caches_an_application_service() {
    let app = Example::start("wrap_own_backend", &["127.0.0.1:0"]);

    assert_eq!(
        app.get("/cache/12").await,
        (200, Some("MISS".into()), "12 squared is 144".into())
    );
    assert_eq!(app.get("/cache/12").await.1, Some("HIT".into()));
    assert_eq!(app.get("/cache/twelve").await.0, 404);
    assert_eq!(
        app.get("/calls").await.2,
        "2\n",
        "one call for 12, one for twelve"
    );
}

#[tokio::test]
async fn a_panicking_application_backend_fails_its_request_cleanly_once() {
    let app = Example::start("wrap_own_backend", &["127.0.0.1:0"]);
    // 4294967296 squared overflows: the application's backend panics.
    let (status, _, body) = app.get("/cache/4294967296").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("panicked"), "{body}");
    // The key is not left stuck, and the rest of the application serves.
    assert_eq!(app.get("/cache/4294967296").await.0, 500);
    assert_eq!(
        app.get("/cache/4").await,
        (200, Some("MISS".into()), "4 squared is 16".into())
    );
}
