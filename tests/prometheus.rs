//! Debian's Prometheus against the local mesh, configured by `ambientctl prometheus-config`
//! (HTTP service discovery on the mesh's scrape port), while known traffic flows through a
//! waypoint: the PromQL behind Kiali's graph and Istio's Grafana dashboards, and every query
//! of docs/grafana/*.json, checked against the requests sent: counters exact, rates and
//! quantiles within tolerance.
//!
//! Needs `prometheus` in `$PATH` (`.ci/run` installs Debian's package).

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ctl::{Ctl, ensure_demo_app, workspace};
use e2e::copy_dir;
use e2e::loopback::{free_port, http_get};
use e2e::{Background, until};
use serde_json::Value;

/// Requests of each kind the client sends.
const SLOW_OK: u64 = 60;
const ERRORS: u64 = 20;
/// The echo server's delay on the `SLOW_OK` requests, in ms.
const DELAY_MS: u64 = 100;

/// Debian's `prometheus`; panics saying how to get it.
fn prometheus_binary() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "this test needs Debian's `prometheus` in $PATH: .ci/run installs it \
                 (`apt-get install -y --no-install-recommends prometheus`, as root)"
            )
        })
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Prometheus' HTTP API.
struct Prom {
    addr: SocketAddr,
}

impl Prom {
    /// An instant query's result vector (at `at`, or now); panics on an evaluation error.
    fn query_at(&self, expr: &str, at: Option<f64>) -> Vec<Value> {
        let mut path = format!("/api/v1/query?query={}", encode(expr));
        if let Some(t) = at {
            path.push_str(&format!("&time={t:.3}"));
        }
        let (status, body) = http_get(self.addr, &path).expect("querying Prometheus");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{expr}: {status} {body:?}: {e}"));
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn query(&self, expr: &str) -> Vec<Value> {
        self.query_at(expr, None)
    }

    /// The value of a query that must give exactly one series.
    fn scalar_at(&self, expr: &str, at: Option<f64>) -> f64 {
        let result = self.query_at(expr, at);
        assert_eq!(result.len(), 1, "{expr}: {result:?}");
        value(&result[0])
    }

    fn scalar(&self, expr: &str) -> f64 {
        self.scalar_at(expr, None)
    }
}

fn value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {series}"))
}

/// The sum of a family's samples whose labels include every `want` pair, in Prometheus
/// text as a proxy serves it.
fn sum_in_text(text: &str, family: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `demo-app get` from the client pod; its `--summary` line.
fn client_get(ctl: &Ctl, url: &str, extra: &[&str]) -> Value {
    ctl.get_summary("shop", "client", url, extra)
}

fn count(v: &Value, code: &str) -> u64 {
    v["status"][code].as_u64().unwrap_or(0)
}

/// Every `expr` of a Grafana dashboard (panels, nested rows included).
fn grafana_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(v) = stack.pop() {
        for p in v["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    let title = p["title"].as_str().unwrap_or_default().to_string();
                    out.push((title, expr.to_string()));
                }
            }
            stack.push(p);
        }
    }
    out
}

#[test]
fn prometheus_reads_the_mesh_with_kialis_and_grafanas_queries() {
    ensure_demo_app();
    let prometheus = prometheus_binary();
    let scratch = tempfile::tempdir().unwrap();
    let ctl = Ctl::new(scratch.path());
    let dir = scratch.path().join("mesh");
    copy_dir(&workspace().join("tests/fixtures/prometheus"), &dir);
    ctl.ok(&["up", dir.to_str().unwrap(), "--detach"]);

    // The configuration a user runs Prometheus with: HTTP service discovery on the mesh's
    // scrape port, refreshed every second here (the default is a user's usual 15 s).
    let config = ctl.ok(&[
        "prometheus-config",
        "--scrape-interval",
        "1s",
        "--refresh-interval",
        "1s",
    ]);
    eprintln!("{config}");
    let config_path = scratch.path().join("prometheus.yml");
    std::fs::write(&config_path, &config).unwrap();
    // Prometheus' own checker accepts it. (Debian builds Prometheus without Kubernetes
    // discovery, so the `--kubernetes` configuration is checked by the unit tests only.)
    let out = Command::new(prometheus.with_file_name("promtool"))
        .args(["check", "config"])
        .arg(&config_path)
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let prom = Prom {
        addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
    };
    let log = std::fs::File::create(scratch.path().join("prometheus.log")).unwrap();
    let _prometheus = Background(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={}", prom.addr))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus"),
    );
    until(
        "Prometheus ready",
        Duration::from_secs(60),
        || match http_get(prom.addr, "/-/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // Discovery: every proxy of the mesh is a healthy target (the waypoint's pod appears
    // once the controller has deployed it).
    until(
        "the controller, both ztunnels and the waypoint scraped",
        Duration::from_secs(90),
        || {
            let up = prom.query("up == 1");
            let components: Vec<String> = up
                .iter()
                .map(|s| s["metric"]["component"].as_str().unwrap_or("").to_string())
                .collect();
            let ztunnels = components.iter().filter(|c| *c == "ztunnel").count();
            (components.iter().any(|c| c == "controller")
                && ztunnels == 2
                && components.iter().any(|c| c == "waypoint"))
            .then_some(())
            .ok_or(format!("{up:?}"))
        },
    );

    // Until the client's ztunnel sends echo's traffic to the waypoint: warm-up requests are
    // 204s, which no check below counts.
    until(
        "requests to echo through the waypoint",
        Duration::from_secs(90),
        || {
            let s = client_get(&ctl, "http://echo/status/204", &[]);
            assert_eq!(count(&s, "204"), 1, "{s}");
            let seen = prom.query(
                r#"istio_requests_total{reporter="waypoint",destination_service_name="echo",response_code="204"}"#,
            );
            (!seen.is_empty())
                .then_some(())
                .ok_or("not yet".to_string())
        },
    );

    // The known traffic: slow successes and, at the same time, fast errors.
    let started = now();
    let errors = {
        // Another handle on the same mesh; not dropped, so it never takes the mesh down.
        let other = std::mem::ManuallyDrop::new(Ctl {
            home: ctl.home.clone(),
        });
        std::thread::spawn(move || {
            client_get(
                &other,
                "http://echo/status/503",
                &["--count", &ERRORS.to_string(), "--interval-ms", "250"],
            )
        })
    };
    let slow = client_get(
        &ctl,
        &format!("http://echo/delay/{DELAY_MS}"),
        &["--count", &SLOW_OK.to_string()],
    );
    let errors = errors.join().unwrap();
    let finished = now();
    assert_eq!(count(&slow, "200"), SLOW_OK, "{slow}");
    assert_eq!(count(&errors, "503"), ERRORS, "{errors}");
    let middle = (started + finished) / 2.0;
    eprintln!("traffic from {started:.1} to {finished:.1}");

    // Counters exact, once Prometheus has scraped past the last request.
    let echo = r#"reporter="waypoint",destination_service_name="echo""#;
    until(
        "Prometheus has every request",
        Duration::from_secs(30),
        || {
            let ok = prom.query(&format!(
                r#"sum(istio_requests_total{{{echo},response_code="200"}})"#
            ));
            let failed = prom.query(&format!(
                r#"sum(istio_requests_total{{{echo},response_code="503"}})"#
            ));
            let got = (ok.first().map(value), failed.first().map(value));
            (got == (Some(SLOW_OK as f64), Some(ERRORS as f64)))
                .then_some(())
                .ok_or(format!("{got:?}"))
        },
    );

    // Kiali's graph: requests by source and destination workload and service (its
    // versioned-app graph's grouping), from the waypoint's reports.
    let kiali = prom.query(
        "sum(istio_requests_total{reporter=~\"destination|waypoint\",\
         destination_service_namespace=\"shop\"}) by (source_cluster,\
         source_workload_namespace,source_workload,source_canonical_service,\
         source_canonical_revision,destination_cluster,destination_service_namespace,\
         destination_service,destination_service_name,destination_workload_namespace,\
         destination_workload,destination_canonical_service,destination_canonical_revision,\
         request_protocol,response_code,grpc_response_status,response_flags)",
    );
    let edge = |code: &str| -> f64 {
        kiali
            .iter()
            .filter(|s| {
                let m = &s["metric"];
                m["source_workload"] == "client"
                    && m["source_workload_namespace"] == "shop"
                    && m["source_canonical_service"] == "client"
                    && m["destination_workload"] == "echo-v1"
                    && m["destination_canonical_service"] == "echo"
                    && m["destination_canonical_revision"] == "v1"
                    && m["destination_service"] == "echo.shop.svc.cluster.local"
                    && m["request_protocol"] == "http"
                    && m["response_code"] == code
            })
            .map(value)
            .sum()
    };
    assert_eq!(edge("200"), SLOW_OK as f64, "{kiali:?}");
    assert_eq!(edge("503"), ERRORS as f64, "{kiali:?}");

    // Rates: what Prometheus extrapolates over a window holding all the traffic is the
    // number of requests sent, within its extrapolation's tolerance.
    let window = (now() - started).ceil() as u64 + 5;
    let increase = prom.scalar(&format!(
        r#"sum(increase(istio_requests_total{{{echo},response_code="200"}}[{window}s]))"#
    ));
    assert!(
        (0.75 * SLOW_OK as f64..=1.3 * SLOW_OK as f64).contains(&increase),
        "increase over {window}s: {increase}, sent {SLOW_OK}"
    );
    let expected_rate = SLOW_OK as f64 / (finished - started);
    let rate = prom.scalar_at(
        &format!(r#"sum(rate(istio_requests_total{{{echo},response_code="200"}}[4s]))"#),
        Some(middle),
    );
    assert!(
        (0.5 * expected_rate..=1.6 * expected_rate).contains(&rate),
        "rate in the middle of the traffic: {rate}/s, sent {expected_rate:.2}/s"
    );
    // Error rate (Istio's Service dashboard's success rate, inverted).
    let error_share = prom.scalar_at(
        &format!(
            "sum(rate(istio_requests_total{{{echo},response_code=~\"5..\"}}[4s])) / \
             sum(rate(istio_requests_total{{{echo}}}[4s]))"
        ),
        Some(middle),
    );
    let sent_share = ERRORS as f64 / (ERRORS + SLOW_OK) as f64;
    assert!(
        (0.4 * sent_share..=2.0 * sent_share).contains(&error_share),
        "error share {error_share}, sent {sent_share:.2}"
    );

    // Latency: every success took the echo's delay, none 50 ms; percentiles land in the
    // (100, 250] ms bucket, as histogram_quantile interpolates it.
    let histogram = |le: &str| {
        prom.scalar(&format!(
            r#"sum(istio_request_duration_milliseconds_bucket{{{echo},response_code="200",le="{le}"}})"#
        ))
    };
    assert_eq!(histogram("50"), 0.0);
    assert_eq!(histogram("+Inf"), SLOW_OK as f64);
    assert_eq!(
        prom.scalar(&format!(
            r#"sum(istio_request_duration_milliseconds_count{{{echo},response_code="200"}})"#
        )),
        SLOW_OK as f64
    );
    for q in ["0.5", "0.9", "0.99"] {
        let p = prom.scalar(&format!(
            "histogram_quantile({q}, sum by (le) (increase(istio_request_duration_milliseconds_bucket\
             {{{echo},response_code=\"200\"}}[{window}s])))"
        ));
        assert!(
            (DELAY_MS as f64..=250.0).contains(&p),
            "p{q}: {p} ms for requests that took {DELAY_MS} ms and a little"
        );
    }

    // TCP: the ztunnels' byte and connection counters, as Prometheus stored them, are what
    // the proxies themselves report (nothing lost or doubled by the discovery), and every
    // connection to echo was mutual TLS.
    let scrape = scrape_address(&ctl);
    let echo_tcp = [
        ("reporter", "destination"),
        ("destination_workload", "echo-v1"),
    ];
    until(
        "Prometheus's TCP figures equal the ztunnels' own",
        Duration::from_secs(30),
        || {
            let mut direct = 0.0;
            for node in ["node-1", "node-2"] {
                let (_, text) = http_get(scrape, &format!("/ztunnel/{node}/metrics"))
                    .map_err(|e| e.to_string())?;
                direct += sum_in_text(&text, "istio_tcp_received_bytes_total", &echo_tcp);
            }
            let stored = prom.scalar(
                r#"sum(istio_tcp_received_bytes_total{reporter="destination",destination_workload="echo-v1"})"#,
            );
            (direct > 0.0 && stored == direct)
                .then_some(())
                .ok_or(format!("direct {direct}, Prometheus {stored}"))
        },
    );
    let mtls = prom.scalar(
        r#"sum(istio_tcp_connections_opened_total{reporter="destination",destination_workload="echo-v1",connection_security_policy="mutual_tls"}) / sum(istio_tcp_connections_opened_total{reporter="destination",destination_workload="echo-v1"})"#,
    );
    assert_eq!(mtls, 1.0);

    // Istio's Grafana dashboards (service and workload views), as they query.
    let dest =
        r#"reporter=~"destination|waypoint",destination_service=~"echo.shop.svc.cluster.local""#;
    for expr in [
        format!("round(sum(irate(istio_requests_total{{{dest}}}[5m])), 0.001)"),
        format!(
            "sum(irate(istio_requests_total{{{dest},response_code!~\"5.*\"}}[5m])) / \
             sum(irate(istio_requests_total{{{dest}}}[5m]))"
        ),
        format!(
            "histogram_quantile(0.50, sum(irate(istio_request_duration_milliseconds_bucket\
             {{{dest}}}[1m])) by (le)) / 1000"
        ),
        format!(
            "histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket\
             {{{dest}}}[1m])) by (le)) / 1000"
        ),
        format!(
            "sum(irate(istio_requests_total{{{dest}}}[5m])) by (source_workload, \
             source_workload_namespace, response_code)"
        ),
        r#"sum(irate(istio_tcp_received_bytes_total{reporter=~"destination|waypoint",destination_workload="echo-v1"}[5m])) by (source_workload)"#.to_string(),
        r#"sum(irate(istio_tcp_connections_opened_total{reporter="destination",destination_workload="echo-v1",connection_security_policy="mutual_tls"}[5m]))"#.to_string(),
    ] {
        let result = prom.query_at(&expr, Some(middle));
        assert!(!result.is_empty(), "{expr}: no series");
        assert!(
            result.iter().all(|s| value(s).is_finite()),
            "{expr}: {result:?}"
        );
    }

    // Our own dashboard: every query evaluates and returns series, in the middle of the
    // traffic.
    let grafana = workspace().join("docs/grafana");
    let mut checked = 0;
    for entry in std::fs::read_dir(&grafana).unwrap().flatten() {
        if entry.path().extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: Value =
            serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
        for (title, expr) in grafana_queries(&dashboard) {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "5s");
            let result = prom.query_at(&expr, Some(finished));
            assert!(
                !result.is_empty(),
                "{}: {title}: {expr}: no series",
                entry.path().display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} Grafana queries");

    // Discovery follows the mesh: a deleted waypoint's pod leaves the targets.
    std::fs::remove_file(dir.join("waypoint.yaml")).unwrap();
    until(
        "the waypoint's target gone",
        Duration::from_secs(60),
        || {
            let (_, body) = http_get(scrape, "/targets").map_err(|e| e.to_string())?;
            (!body.contains("\"waypoint\"")).then_some(()).ok_or(body)
        },
    );
    ctl.ok(&["down"]);
}

/// The mesh's scrape port, from the configuration `prometheus-config` prints.
fn scrape_address(ctl: &Ctl) -> SocketAddr {
    let config = ctl.ok(&["prometheus-config"]);
    let url = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("- url: http://"))
        .expect("an http_sd url");
    url.trim_end_matches("/targets").parse().unwrap()
}
