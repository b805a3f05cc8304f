//! What one access-log line costs to format in the text layout: a waypoint's per-request
//! line, written to a sink (no I/O), 300,000 times a round. See docs/benchmarks.md.
//!
//!     cargo run --release -p proxy-core --example log_line_cost

use proxy_core::logging::{IstioLayout, LogFormat};
fn main() {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .event_format(IstioLayout(LogFormat::Text))
        .finish();
    let src: std::net::SocketAddr = "10.244.1.2:40000".parse().unwrap();
    tracing::subscriber::with_default(subscriber, || {
        for round in 0..5 {
            let t = std::time::Instant::now();
            let n = 300_000u64;
            for i in 0..n {
                tracing::info!(target: "access", method = "GET", path = "/productpage", authority = "reviews:9080",
                    protocol = "http", status = 200u64, flags = "-", route = "default", src = %src,
                    src_principal = %"spiffe://cluster.local/ns/default/sa/client", dst = %src, upstream = %src,
                    dst_principal = %"spiffe://cluster.local/ns/default/sa/reviews", attempts = 1u64, rate_limit = "-",
                    bytes_received = 0u64, bytes_sent = i, duration_ms = format_args!("{:.2}", i as f64 / 7.0),
                    trace_id = %"4bf92f3577b34da6a3ce929d0e0e4736", span_id = %format_args!("{:016x}", i), "request");
            }
            eprintln!(
                "round {round}: {:.0} ns per line",
                t.elapsed().as_nanos() as f64 / n as f64
            );
        }
    });
}
