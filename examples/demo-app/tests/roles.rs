//! The roles as real processes on 127.0.0.1, called with `demo-app get`.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_demo-app");

/// A server role running as a child process, with its stdout collected line by line.
struct Role {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Role {
    fn start(pod: &str, args: &[&str]) -> Role {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--address", "127.0.0.1", "--port", "0"])
            .env("POD_NAME", pod)
            .env("POD_NAMESPACE", "test")
            .env_remove("PORT")
            .env_remove("REVIEWS_URL")
            .env_remove("RATINGS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn demo-app");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).expect("read the first line");
        let addr = first
            .split_once(" listening on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{pod}: unexpected first line {first:?}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Role { child, addr, lines }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The access log lines so far.
    fn access_lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" access "))
            .cloned()
            .collect()
    }

    /// Waits until an access log line contains `needle`, and returns it.
    fn wait_for_access(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.access_lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no access line with {needle:?} in {:?}",
                self.access_lines()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("get")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run demo-app get")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&output.stdout)))
}

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn chain_productpage_reviews_v2_ratings() {
    let ratings = Role::start("ratings-v1", &["ratings"]);
    let ratings_url = format!("http://{}", ratings.addr);
    let reviews = Role::start(
        "reviews-v2",
        &["reviews", "--version", "v2", "--ratings", &ratings_url],
    );
    let reviews_url = format!("http://{}", reviews.addr);
    let productpage = Role::start(
        "productpage-v1",
        &["productpage", "--reviews", &reviews_url],
    );

    // Ratings alone.
    let out = get(&[&ratings.url("/ratings/0")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let body = json(&out);
    assert_eq!(body["ratings"]["Reviewer1"], 5);
    assert_eq!(body["pod"], "ratings-v1");

    // Reviews v2 with black stars from ratings.
    let out = get(&[&reviews.url("/reviews/3")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let body = json(&out);
    assert_eq!(body["id"], 3);
    assert_eq!(body["version"], "v2");
    assert_eq!(body["pod"], "reviews-v2");
    assert!(body.get("ratings_error").is_none(), "{body}");
    let first = &body["reviews"][0];
    assert_eq!(first["rating"]["stars"], 5);
    assert_eq!(first["rating"]["color"], "black");
    let line = ratings.wait_for_access("path=\"/ratings/3\"");
    assert!(
        line.contains("status=200") && line.contains("peer=127.0.0.1:"),
        "{line}"
    );

    // The whole chain.
    let out = get(&[
        &productpage.url("/productpage"),
        "-H",
        "x-request-id: chain-1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(
        page.contains("productpage-pod: test/productpage-v1"),
        "{page}"
    );
    assert!(page.contains("reviews-version: v2"), "{page}");
    assert!(page.contains("reviews-pod: reviews-v2"), "{page}");
    assert!(page.contains("★★★★★ 5/5 black"), "{page}");
    assert!(page.contains("★★★★☆ 4/5 black"), "{page}");
    let line = productpage.wait_for_access("path=\"/productpage\"");
    assert!(
        line.contains("method=GET") && line.contains("status=200"),
        "{line}"
    );
    assert!(line.contains("duration_ms="), "{line}");
    assert!(
        line.contains(&format!("outbound=\"GET {reviews_url}/reviews/0 200 ")),
        "{line}"
    );
    let line = reviews.wait_for_access("path=\"/reviews/0\"");
    assert!(
        line.contains(&format!("outbound=\"GET {ratings_url}/ratings/0 200 ")),
        "{line}"
    );

    // -i: status line and headers first.
    let out = get(&["-i", &productpage.url("/health")]);
    assert_eq!(out.status.code(), Some(0));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("HTTP/1.1 200 OK\n"), "{shown}");
    assert!(shown.contains("x-demo-pod: productpage-v1\n"), "{shown}");
    assert!(shown.contains("\"status\":\"ok\""), "{shown}");

    // Several requests.
    let out = get(&[
        "--count",
        "3",
        "--interval-ms",
        "10",
        &reviews.url("/reviews/1"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 3);

    // HTTP errors: 22, like curl -f.
    let out = get(&[&productpage.url("/nope")]);
    assert_eq!(out.status.code(), Some(22));
    assert!(
        text(&out.stderr).contains("HTTP 404"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let out = get(&[&ratings.url("/ratings/x")]);
    assert_eq!(out.status.code(), Some(22));
    assert!(text(&out.stderr).contains("HTTP 400"));
    let out = get(&["-X", "POST", &ratings.url("/ratings/0")]);
    assert_eq!(out.status.code(), Some(22));
    assert!(text(&out.stderr).contains("HTTP 405"));

    // Nothing listening: 7, like curl.
    let out = get(&[&format!("http://127.0.0.1:{}/", closed_port())]);
    assert_eq!(out.status.code(), Some(7));
    assert!(!out.stderr.is_empty());

    // A count with one failure fails.
    let port = closed_port();
    let out = get(&["--count", "2", &format!("http://127.0.0.1:{port}/")]);
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn reviews_v1_does_not_call_ratings() {
    let ratings = Role::start("ratings-v1", &["ratings"]);
    let ratings_url = format!("http://{}", ratings.addr);
    let reviews = Role::start(
        "reviews-v1",
        &["reviews", "--version", "v1", "--ratings", &ratings_url],
    );

    let out = get(&[&reviews.url("/reviews/0")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let body = json(&out);
    assert_eq!(body["version"], "v1");
    assert_eq!(body["pod"], "reviews-v1");
    assert!(body.get("ratings_error").is_none(), "{body}");
    let reviews_list = body["reviews"].as_array().unwrap();
    assert_eq!(reviews_list.len(), 2);
    assert!(
        reviews_list.iter().all(|r| r.get("rating").is_none()),
        "{body}"
    );

    // Reviews logged the request with no outbound call; ratings saw nothing. The access
    // line is written before the response is sent, so it is there by now (or soon).
    let line = reviews.wait_for_access("path=\"/reviews/0\"");
    assert!(!line.contains("outbound="), "{line}");
    thread::sleep(Duration::from_millis(200));
    assert!(
        ratings.access_lines().is_empty(),
        "{:?}",
        ratings.access_lines()
    );
}

#[test]
fn reviews_v3_without_ratings_still_answers() {
    let dead_ratings = format!("http://127.0.0.1:{}", closed_port());
    let reviews = Role::start(
        "reviews-v3",
        &["reviews", "--version", "v3", "--ratings", &dead_ratings],
    );
    let productpage = Role::start(
        "productpage-v1",
        &[
            "productpage",
            "--reviews",
            &format!("http://{}", reviews.addr),
        ],
    );

    let out = get(&[&reviews.url("/reviews/0")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let body = json(&out);
    assert_eq!(body["version"], "v3");
    let error = body["ratings_error"].as_str().expect("ratings_error");
    assert!(error.contains("connect"), "{error}");
    assert!(body["reviews"][0].get("rating").is_none(), "{body}");
    let line = reviews.wait_for_access("path=\"/reviews/0\"");
    assert!(
        line.contains("status=200") && line.contains("error: "),
        "{line}"
    );

    let out = get(&[&productpage.url("/productpage")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains("reviews-version: v3"), "{page}");
    assert!(page.contains("ratings-error: "), "{page}");
}

#[test]
fn productpage_env_overrides() {
    // REVIEWS_URL from the environment (as a pod manifest's `env` would set it).
    let port = closed_port();
    let mut child = Command::new(BIN)
        .args(["productpage", "--address", "127.0.0.1"])
        .env("PORT", "0")
        .env("REVIEWS_URL", format!("http://127.0.0.1:{port}"))
        .env("POD_NAME", "productpage-env")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr = first
        .split_once(" listening on ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(!addr.ends_with(":9080"), "{first}");
    let out = get(&[&format!("http://{addr}/productpage")]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains("productpage-pod: productpage-env"), "{page}");
    assert!(
        page.contains("reviews-error: ") && page.contains(&format!(":{port}")),
        "{page}"
    );
}
