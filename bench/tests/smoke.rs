//! The mesh benchmark still runs end to end and prints every figure (numbers not judged):
//! tiny durations, in its own sandbox, as `cargo test --workspace` runs it.

#![forbid(unsafe_code)]

use std::process::Command;

#[test]
fn mesh_benchmark_prints_every_figure() {
    let out_dir = tempfile::tempdir().expect("temporary directory");
    let json = out_dir.path().join("mesh-bench.json");
    let plots = out_dir.path().join("img");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["mesh", "--quick", "--json"])
        .arg(&json)
        .arg("--plots")
        .arg(&plots)
        .output()
        .expect("running the benchmark");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench mesh --quick failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for figure in [
        "L4 throughput, 1 stream",
        "L4 throughput, 8 streams",
        "HTTP/1.1 latency p50",
        "HTTP/1.1 latency p90",
        "HTTP/1.1 latency p99 ",
        "HTTP/1.1 latency p99.9",
        "latency added by the mesh, p99",
        "HTTP/1.1 max requests/s",
        "new connections/s",
        "ztunnel CPU per GB moved",
        "ztunnel CPU per 10,000 requests",
        "ztunnel memory idle, client node",
        "ztunnel memory idle, server node",
        "ztunnel memory per open connection at 100, client node",
        "ztunnel memory per open connection at 100, server node",
        "ztunnel vCPU at 1,000 req/s",
        "waypoint vCPU at 1,000 req/s",
        "waypoint CPU per 10,000 requests",
        "waypoint memory idle",
    ] {
        assert!(stdout.contains(figure), "no {figure:?} in:\n{stdout}");
    }
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("JSON");
    let figures = results["figures"].as_array().expect("figures");
    let throughput = figures
        .iter()
        .find(|f| f["key"] == "throughput_1")
        .expect("1-stream throughput");
    assert!(throughput["values"]["mesh"].is_number() && throughput["values"]["direct"].is_number());
    let max_rps = figures
        .iter()
        .find(|f| f["key"] == "max_rps")
        .expect("maximum request rate");
    for path in ["direct", "mesh", "waypoint"] {
        assert!(max_rps["values"][path].is_number(), "{path}: {max_rps}");
    }
    assert!(
        results["waypoint_requests"].as_f64().unwrap_or(0.0) > 0.0,
        "the waypoint path went through the waypoint"
    );
    for svg in ["mesh-latency.svg", "mesh-throughput.svg", "mesh-ratios.svg"] {
        let text = std::fs::read_to_string(plots.join(svg)).expect("plot written");
        assert!(text.starts_with("<svg"), "{svg}");
    }
}

/// Runs `bench ARGS` and returns its stdout, failing with both streams if it fails.
fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .output()
        .expect("running the benchmark");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bench {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn chaos_benchmark_runs_every_event() {
    let stdout = bench(&["chaos", "--quick", "--drain-seconds", "2"]);
    for event in [
        "controller",
        "agent",
        "ztunnel",
        "ztunnel-upgrade",
        "waypoint",
        "rotation",
        "policy-storm",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(event)),
            "no {event} row in:\n{stdout}"
        );
    }
}

#[test]
fn soak_benchmark_samples_churns_and_plots() {
    let out_dir = tempfile::tempdir().expect("temporary directory");
    let json = out_dir.path().join("soak.json");
    let plots = out_dir.path().join("img");
    let stdout = bench(&[
        "soak",
        "--minutes",
        "0.3",
        "--warmup",
        "0.05",
        "--sample",
        "1",
        "--pod-churn",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]);
    assert!(stdout.contains("ztunnel node-b"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("JSON");
    assert_eq!(report["processes"].as_array().map(Vec::len), Some(4));
    assert!(report["samples"].as_array().is_some_and(|s| s.len() >= 10));
    assert!(report["pods_churned"].as_u64() >= Some(3));
    assert!(report["policy_edits"].as_u64() >= Some(3));
    assert!(report["exchanges"].as_u64() > Some(100));
    for plot in ["soak-memory.svg", "soak-fds.svg"] {
        assert!(plots.join(plot).is_file(), "{plot} missing");
    }
}
