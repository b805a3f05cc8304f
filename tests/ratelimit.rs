//! Local rate limiting (LocalRateLimitPolicy) end to end in the local runtime: `ambientctl up`
//! on tests/fixtures/ratelimit-e2e, requests from mesh pods of four service accounts with
//! `demo-app get`, the waypoint's metrics read through the control socket, and the policies'
//! status from the controller.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::process::{Command, Stdio};
use std::time::Duration;

use ctl::{Ctl, EXE, metric_sum as sum};
use serde_json::Value;

fn summary(ctl: &Ctl, pod: &str, url: &str, extra: &[&str]) -> Value {
    ctl.get_summary("shop", pod, url, extra)
}

fn parse_summary(out: &str) -> Value {
    let line = out.lines().last().expect("a summary line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
}

fn status(v: &Value, code: &str) -> u64 {
    v["status"][code].as_u64().unwrap_or(0)
}

fn waypoint_metrics(ctl: &Ctl) -> String {
    ctl.waypoint_metrics("shop")
}

#[test]
fn local_rate_limits_at_the_waypoint() {
    let scratch = tempfile::tempdir().unwrap();
    let (ctl, _) = Ctl::up_fixture(scratch.path(), "ratelimit-e2e");

    // Ready once a request through the waypoint is answered.
    ctl.until(
        &[
            "exec",
            "-n",
            "shop",
            "client",
            "--",
            "demo-app",
            "get",
            "http://limited/",
            "--summary",
        ],
        Duration::from_secs(60),
        |out| String::from_utf8_lossy(&out.stdout).contains("\"ok\":1"),
    );

    // The policies' status: accepted where their target exists.
    let (code, body) = ctl.control_get("/controller/debug/policies");
    assert_eq!(code, 200, "{body}");
    let policies: Value = serde_json::from_str(&body).expect("JSON");
    let policy = |name: &str| {
        policies
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {policies}"))
            .clone()
    };
    assert_eq!(policy("limited-total")["accepted"], true);
    assert_eq!(
        policy("limited-total")["attached"][0],
        "Service shop/limited"
    );
    assert_eq!(policy("fair-share")["accepted"], true);
    assert_eq!(policy("nowhere")["accepted"], false);
    assert_eq!(policy("nowhere")["reason"], "TargetNotFound");

    // 1,000 requests at about four times the rate (four clients, one every 20 ms each):
    // allowed = burst + rate × elapsed, within 5 %.
    let before = waypoint_metrics(&ctl);
    let run = summary(
        &ctl,
        "client",
        "http://limited/",
        &[
            "--count",
            "1000",
            "--concurrency",
            "4",
            "--interval-ms",
            "20",
        ],
    );
    let (allowed, limited) = (status(&run, "200"), status(&run, "429"));
    assert_eq!(allowed + limited, 1000, "{run}");
    let elapsed = run["elapsed_ms"].as_f64().unwrap() / 1000.0;
    let expected = 5.0 + 50.0 * elapsed;
    eprintln!(
        "limited: {allowed} allowed, {limited} refused in {elapsed:.2} s; expected {expected:.0} allowed ({:.1} % off)",
        (allowed as f64 - expected).abs() / expected * 100.0
    );
    assert!(
        (allowed as f64 - expected).abs() <= 0.05 * expected,
        "allowed {allowed} vs expected {expected:.1}: {run}"
    );
    assert!(
        limited >= 500,
        "the clients offered far more than the rate: {run}"
    );
    let after = waypoint_metrics(&ctl);
    let refused = |m: &str| {
        sum(
            m,
            "ambient_rate_limited_total",
            &[("policy", "shop/limited-total"), ("bucket", "total")],
        )
    };
    assert_eq!(
        refused(&after) - refused(&before),
        limited,
        "the policy's counter"
    );
    let flagged = |m: &str| {
        sum(
            m,
            "istio_requests_total",
            &[
                ("destination_service_name", "limited"),
                ("response_code", "429"),
                ("response_flags", "RL"),
            ],
        )
    };
    assert_eq!(
        flagged(&after) - flagged(&before),
        limited,
        "429 RL in the request metrics"
    );

    // A refused request says when to come back.
    let out = ctl.run(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        "-i",
        "http://limited/",
        "--count",
        "12",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.contains(" 429 "), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(text.contains("local_rate_limited"), "{text}");

    // Fairness: a noisy client far over its 20 a second, and, while it runs, a quiet one at
    // 10 a second: the quiet one is never refused (the noisy one's refusals spend none of the
    // total).
    let noisy = Command::new(EXE)
        .args([
            "exec",
            "-n",
            "shop",
            "noisy",
            "--",
            "demo-app",
            "get",
            "http://fair/",
            "--summary",
            "--count",
            "1500",
            "--concurrency",
            "4",
            "--interval-ms",
            "10",
        ])
        .env("AMBIENT_HOME", &ctl.home)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the noisy client is being refused ...
    let noisy_refused = |m: &str| {
        sum(
            m,
            "ambient_rate_limited_total",
            &[("policy", "shop/fair-share"), ("bucket", "identity")],
        )
    };
    let started = std::time::Instant::now();
    while noisy_refused(&waypoint_metrics(&ctl)) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "noisy is never refused"
        );
    }
    let quiet = summary(
        &ctl,
        "quiet",
        "http://fair/",
        &["--count", "30", "--interval-ms", "100"],
    );
    let noisy = noisy.wait_with_output().unwrap();
    let noisy = parse_summary(&String::from_utf8_lossy(&noisy.stdout));
    eprintln!("fair: noisy {noisy}\nfair: quiet {quiet}");
    assert_eq!(
        status(&quiet, "200"),
        30,
        "the quiet client is never refused: {quiet}"
    );
    let noisy_elapsed = noisy["elapsed_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        noisy_elapsed > quiet["elapsed_ms"].as_f64().unwrap() / 1000.0,
        "the noisy client ran throughout: {noisy}"
    );
    let noisy_allowed = status(&noisy, "200") as f64;
    let noisy_expected = 5.0 + 20.0 * noisy_elapsed;
    assert!(
        (noisy_allowed - noisy_expected).abs() <= 0.05 * noisy_expected,
        "noisy held to its own 20/s: {noisy_allowed} vs {noisy_expected:.1}"
    );

    // Overrides: the vip service account may send 30 at once; an ordinary client gets its
    // burst of 5 (and what refills meanwhile); POSTs are held to one a second for anyone.
    let vip = summary(&ctl, "vip", "http://fair/", &["--count", "30"]);
    assert_eq!(status(&vip, "200"), 30, "{vip}");
    let plain = summary(&ctl, "client", "http://fair/", &["--count", "30"]);
    let plain_bound = 5.0 + 20.0 * plain["elapsed_ms"].as_f64().unwrap() / 1000.0 + 1.0;
    assert!(
        (status(&plain, "200") as f64) <= plain_bound && status(&plain, "429") > 0,
        "{plain}"
    );
    let posts = summary(
        &ctl,
        "quiet",
        "http://fair/",
        &["--count", "5", "-X", "POST", "-d", "x"],
    );
    let posts_bound = 1.0 + posts["elapsed_ms"].as_f64().unwrap() / 1000.0 + 1.0;
    assert!(
        (status(&posts, "200") as f64) <= posts_bound && status(&posts, "429") >= 3,
        "{posts}"
    );
    let overridden = sum(
        &waypoint_metrics(&ctl),
        "ambient_rate_limited_total",
        &[("policy", "shop/fair-share"), ("bucket", "override")],
    );
    assert_eq!(
        overridden,
        status(&posts, "429"),
        "POSTs refused by the override"
    );

    ctl.ok(&["down"]);
}
