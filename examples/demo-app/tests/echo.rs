//! The echo role as a real process on 127.0.0.1, called with `demo-app get` (HTTP/1.1 and
//! HTTP/2), with `--summary`, and with raw HTTP/1.1 bytes.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_demo-app");

/// `demo-app echo` running as a child process.
struct Echo {
    child: Child,
    addr: SocketAddr,
}

impl Echo {
    fn start(args: &[&str]) -> Echo {
        let mut child = Command::new(BIN)
            .arg("echo")
            .args(["--address", "127.0.0.1", "--port", "0"])
            .args(args)
            .env_remove("PORT")
            .env_remove("POD_NAME")
            .env_remove("VERSION")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn demo-app echo");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).expect("read the first line");
        let addr = first
            .strip_prefix("demo-app echo listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        // Keep draining the access log so that the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout.lines() {});
        Echo { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Echo {
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

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&output.stdout)))
}

/// The single stdout line of `get --summary`.
fn summary(output: &Output) -> Value {
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    json(output)
}

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Sends `request` as is and reads until the server closes the connection.
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn echoes_http1_requests() {
    let echo = Echo::start(&["--name", "echo-a", "--version", "v7"]);

    let out = get(&[
        "-i",
        "-X",
        "PUT",
        "-d",
        "hello",
        "-H",
        "X-Test: one",
        &echo.url("/some/path?a=1&b=2"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("HTTP/1.1 200 OK\n"), "{shown}");
    assert!(shown.contains("x-echo-name: echo-a\n"), "{shown}");
    assert!(shown.contains("x-echo-version: v7\n"), "{shown}");
    assert!(
        shown.contains("content-type: application/json\n"),
        "{shown}"
    );
    let body: Value = serde_json::from_str(shown.split_once("\n\n").unwrap().1).unwrap();
    assert_eq!(body["name"], "echo-a");
    assert_eq!(body["version"], "v7");
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["path"], "/some/path");
    assert_eq!(body["query"], "a=1&b=2");
    assert_eq!(body["host"], echo.addr.to_string());
    assert_eq!(body["protocol"], "HTTP/1.1");
    assert_eq!(body["headers"]["x-test"], "one");
    assert_eq!(body["headers"]["content-length"], "5");
    assert_eq!(body["body_bytes"], 5);
    assert_eq!(body["failed"], false);

    // -d alone makes a POST, as with curl.
    let out = get(&["-d", "", &echo.url("/")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out)["method"], "POST");

    // Repeated headers are joined; names are lowercased; any method is echoed.
    let response = raw(
        echo.addr,
        "DELETE /x HTTP/1.1\r\nHost: echo.test\r\nX-Multi: a\r\nx-multi: b\r\n\
         Connection: close\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let body: Value = serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["method"], "DELETE");
    assert_eq!(body["host"], "echo.test");
    assert_eq!(body["headers"]["x-multi"], "a, b");
    assert_eq!(body["body_bytes"], 3);
    assert_eq!(body["query"], "");
}

#[test]
fn echoes_http2_requests() {
    let echo = Echo::start(&[]);

    let out = get(&["--http2", "-i", "-d", "abcd", &echo.url("/h2?q")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("HTTP/2.0 200 OK\n"), "{shown}");
    assert!(shown.contains("x-echo-name: echo\n"), "{shown}");
    assert!(shown.contains("x-echo-version: v1\n"), "{shown}");
    let body: Value = serde_json::from_str(shown.split_once("\n\n").unwrap().1).unwrap();
    assert_eq!(body["protocol"], "HTTP/2");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/h2");
    assert_eq!(body["query"], "q");
    assert_eq!(body["host"], echo.addr.to_string());
    assert_eq!(body["body_bytes"], 4);
    assert_eq!(body["name"], "echo");

    // Both protocols on the one port, several connections at once.
    let out = get(&[
        "--http2",
        "--summary",
        "--count",
        "12",
        "--concurrency",
        "4",
        &echo.url("/status/202"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["requests"], 12);
    assert_eq!(s["ok"], 12);
    assert_eq!(s["status"]["202"], 12);
}

#[test]
fn status_and_delay_paths() {
    let echo = Echo::start(&[]);

    // Like curl -f: 22 without --summary.
    let out = get(&[&echo.url("/status/418")]);
    assert_eq!(out.status.code(), Some(22));
    assert!(
        text(&out.stderr).contains("HTTP 418"),
        "{}",
        text(&out.stderr)
    );

    let out = get(&["-i", &echo.url("/status/302")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("HTTP/1.1 302 Found\n"));

    let out = get(&["-i", &echo.url("/status/204")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("HTTP/1.1 204 No Content\n"), "{shown}");
    assert!(shown.ends_with("\n\n"), "{shown:?}");

    // A malformed code is the client's fault.
    let out = get(&["--summary", &echo.url("/status/teapot")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(summary(&out)["status"]["400"], 1);

    // Delays hold the answer back; a shorter client deadline gives up (28, like curl).
    let out = get(&["--summary", &echo.url("/delay/300")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["status"]["200"], 1);
    assert!(s["latency_ms"]["max"].as_f64().unwrap() >= 300.0, "{s}");

    let out = get(&[
        "--summary",
        "--count",
        "2",
        "--concurrency",
        "2",
        "--timeout-ms",
        "200",
        &echo.url("/delay/2000"),
    ]);
    assert_eq!(out.status.code(), Some(28), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["requests"], 2);
    assert_eq!(s["ok"], 0);
    assert_eq!(s["errors"]["timeout"], 2);
    assert_eq!(s["status"], serde_json::json!({}));
    assert!(s["latency_ms"]["p50"].is_null(), "{s}");
}

#[test]
fn fails_every_nth_request_across_connections() {
    let echo = Echo::start(&["--fail-every", "3", "--version", "v2"]);

    // One request per connection, three connections at a time: requests 3, 6, 9... fail.
    let out = get(&[
        "--summary",
        "--by-header",
        "x-echo-version",
        "--count",
        "20",
        "--concurrency",
        "3",
        &echo.url("/"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["requests"], 20);
    assert_eq!(s["ok"], 14);
    assert_eq!(s["status"], serde_json::json!({"200": 14, "503": 6}));
    assert_eq!(
        s["errors"],
        serde_json::json!({"connect": 0, "exchange": 0, "timeout": 0})
    );
    // Failed answers carry the headers too.
    assert_eq!(s["by"], serde_json::json!({"v2": 20}));
    for p in ["p50", "p90", "p99", "max"] {
        assert!(s["latency_ms"][p].as_f64().is_some(), "{s}");
    }

    // The count goes on: request 21 fails, with the JSON still there; 22 and 23 pass.
    let response = raw(
        echo.addr,
        "GET /any HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{response}"
    );
    let body: Value = serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["failed"], true);
    assert_eq!(body["request"], 21);
    assert_eq!(body["version"], "v2");
    for request in [22, 23] {
        let out = get(&[&echo.url("/")]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let body = json(&out);
        assert_eq!(
            (body["failed"].clone(), body["request"].clone()),
            (false.into(), request.into())
        );
    }

    // A chosen failure status; a header the responses lack is counted under "-".
    let echo = Echo::start(&["--fail-every", "2", "--fail-status", "500"]);
    let out = get(&[
        "--http2",
        "--summary",
        "--by-header",
        "x-absent",
        "--count",
        "4",
        &echo.url("/"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["status"], serde_json::json!({"200": 2, "500": 2}));
    assert_eq!(s["by"], serde_json::json!({"-": 4}));
}

#[test]
fn summary_of_unanswered_requests() {
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let out = get(&["--summary", "--count", "3", "--concurrency", "2", &url]);
    assert_eq!(out.status.code(), Some(7));
    let s = summary(&out);
    assert_eq!(s["requests"], 3);
    assert_eq!(s["ok"], 0);
    assert_eq!(s["errors"]["connect"], 3);

    // Nothing to send: no summary, curl's exit code.
    let out = get(&["--summary", "https://example.invalid/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn concurrency_without_summary_prints_every_body() {
    let echo = Echo::start(&[]);
    let out = get(&[
        "--count",
        "5",
        "--concurrency",
        "3",
        "--interval-ms",
        "5",
        &echo.url("/"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut numbers: Vec<u64> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["request"]
                .as_u64()
                .unwrap()
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
}

/// `--call`: the echo server GETs its upstreams on a timer and says when each starts or stops
/// answering (once per change, not per request).
#[test]
fn echo_calls_its_upstreams_and_reports_changes() {
    let upstream = Echo::start(&[]);
    let ok = upstream.url("/");
    let failing = upstream.url("/status/503");
    let mut caller = Command::new(BIN)
        .args(["echo", "--address", "127.0.0.1", "--port", "0"])
        .args([
            "--call",
            &ok,
            "--call",
            &failing,
            "--call-interval-ms",
            "20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the calling echo");
    let mut lines = BufReader::new(caller.stdout.take().unwrap()).lines();
    let mut next_call_line = || loop {
        let line = lines.next().expect("caller exited").expect("read a line");
        if line.starts_with("demo-app: calling ") {
            return line;
        }
    };
    let mut first = [next_call_line(), next_call_line()];
    first.sort();
    assert_eq!(
        first,
        [
            format!("demo-app: calling {ok}: ok"),
            format!("demo-app: calling {failing}: status 503"),
        ]
    );
    // The upstream goes away: one line for the URL that was answering, none for the one that
    // was already failing (its failure changes reason, not state).
    drop(upstream);
    let gone = next_call_line();
    assert!(
        gone.starts_with(&format!("demo-app: calling {ok}: failed to connect")),
        "{gone}"
    );
    let _ = caller.kill();
    let _ = caller.wait();
}
