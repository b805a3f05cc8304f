//! Canary rollouts end to end in the local runtime: `ambientctl up` on
//! tests/fixtures/rollout-e2e with two Rollouts, steady traffic from a mesh pod, the
//! waypoints' health reports judging each canary, and `ambientctl rollout` reading and acting
//! on them. A canary answering 500 is rolled back within one analysis window and gets no
//! request afterwards; a healthy one is promoted step by step.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::time::{Duration, Instant};

use ctl::{Ctl, metric_sum};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// The Rollout `name` as the controller's engine shows it.
fn rollout(ctl: &Ctl, name: &str) -> Value {
    let (code, body) = ctl.control_get("/controller/debug/rollouts");
    assert_eq!(code, 200, "{body}");
    let all: Value = serde_json::from_str(&body).expect("JSON");
    all.as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until Rollout `name` is in `phase`.
fn until_phase(ctl: &Ctl, name: &str, phase: &str) -> Value {
    let start = Instant::now();
    loop {
        let r = rollout(ctl, name);
        if r["phase"] == phase {
            return r;
        }
        assert!(start.elapsed() < WAIT, "{name} never reached {phase}: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `n` requests to `url` from the client pod, by the answering echo's version.
fn versions(ctl: &Ctl, url: &str, n: u32) -> Value {
    let out = ctl.ok(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        url,
        "--summary",
        "--count",
        &n.to_string(),
        "--by-header",
        "x-echo-version",
    ]);
    serde_json::from_str(out.lines().last().expect("a summary")).expect("JSON")
}

/// Waits until `n` requests in a row to `url` are all answered by `version`.
fn until_only(ctl: &Ctl, url: &str, version: &str) {
    let start = Instant::now();
    loop {
        let v = versions(ctl, url, 50);
        if v["by"][version] == 50 {
            return;
        }
        assert!(start.elapsed() < WAIT, "{url} never only {version}: {v}");
    }
}

/// Requests the waypoint sent to version `version` of app `app`.
fn served(ctl: &Ctl, app: &str, version: &str) -> u64 {
    metric_sum(
        &ctl.waypoint_metrics("shop"),
        "istio_requests_total",
        &[("destination_app", app), ("destination_version", version)],
    )
}

#[test]
fn canaries_rolled_back_and_promoted_by_the_waypoints_measurements() {
    let scratch = tempfile::tempdir().unwrap();
    let (ctl, _) = Ctl::up_fixture(scratch.path(), "rollout-e2e");
    for url in ["http://web-a/", "http://web-b/"] {
        ctl.until(
            &[
                "exec",
                "-n",
                "shop",
                "client",
                "--",
                "demo-app",
                "get",
                url,
                "--summary",
            ],
            WAIT,
            |out| String::from_utf8_lossy(&out.stdout).contains("\"status\":{\""),
        );
    }

    // Steady traffic, 50 requests a second to each.
    let _a = ctl.spawn(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        "http://web-a/",
        "--summary",
        "--count",
        "6000",
        "--interval-ms",
        "20",
    ]);
    let _b = ctl.spawn(&[
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "demo-app",
        "get",
        "http://web-b/",
        "--summary",
        "--count",
        "6000",
        "--interval-ms",
        "20",
    ]);

    // The failing canary: rolled back at its first step, on one window's evidence.
    let a = until_phase(&ctl, "web-a", "RolledBack");
    eprintln!("web-a: {a}");
    let message = a["message"].as_str().unwrap();
    assert!(
        message.starts_with("rolled back at step 1 (20 %)"),
        "{message}"
    );
    assert!(message.contains("success rate"), "{message}");
    assert_eq!(a["canaryWeight"], 0);
    assert_eq!(a["analysis"]["windowMs"], 2000);
    let a_served = served(&ctl, "a", "v2");
    // 20 % of 50 a second is 10 a second: a 2 s window, a report period (1 s) and the push
    // hold about 35; anything near a second window's worth would be too many.
    assert!(
        a_served <= 60,
        "the failing canary served {a_served} requests before the rollback"
    );
    // ... and none once the rollback is in place, the steady traffic included.
    until_only(&ctl, "http://web-a/", "v1");
    let before = served(&ctl, "a", "v2");
    let after_rollback = versions(&ctl, "http://web-a/", 300);
    assert_eq!(after_rollback["by"]["v1"], 300, "{after_rollback}");
    assert_eq!(
        served(&ctl, "a", "v2"),
        before,
        "no request reached the canary after the rollback"
    );

    // The healthy canary: 20 %, then 50 %, then all.
    let b = until_phase(&ctl, "web-b", "Promoted");
    eprintln!("web-b: {b}");
    let events: Vec<&str> = b["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "step 1/2: canary at 20 %",
            "step 2/2: canary at 50 %",
            "promoted: 2 steps passed, canary at 100 %"
        ]
    );
    assert!(
        b["analysis"]["successRate"].as_f64().unwrap() >= 95.0,
        "{b}"
    );
    until_only(&ctl, "http://web-b/", "v2");
    let (b1, b2) = (served(&ctl, "b", "v1"), served(&ctl, "b", "v2"));
    assert!(
        b1 > 0 && b2 > 0,
        "both versions served during the rollout: {b1} / {b2}"
    );

    // The CLI: status, and an abort by hand that sends b back to its stable version.
    let status = ctl.run(&["rollout", "status", "-n", "shop", "web-a"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(1), "rolled back: exit 1\n{text}");
    assert!(text.contains("RolledBack") && text.contains("0%"), "{text}");
    let status = ctl.run(&["rollout", "status", "-n", "shop", "web-b"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("Promoted") && text.contains("100%"), "{text}");
    ctl.ok(&["rollout", "abort", "-n", "shop", "web-b"]);
    let b = until_phase(&ctl, "web-b", "RolledBack");
    assert_eq!(b["message"], "aborted by hand: stable at 100 %");
    until_only(&ctl, "http://web-b/", "v1");

    drop((_a, _b));
    ctl.ok(&["down"]);
}
