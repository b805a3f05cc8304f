//! Every proxy writes a text log line per connection or request (the access log), so once a
//! thread has written one, writing more must not touch the heap. Counted by dhat's
//! allocator; fails if the line's buffers stop being kept between lines.

use proxy_core::logging::{IstioLayout, LogFormat};

#[global_allocator]
static HEAP: dhat::Alloc = dhat::Alloc;

#[test]
fn text_lines_allocate_nothing_once_warm() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .event_format(IstioLayout(LogFormat::Text))
        .finish();
    let src: std::net::SocketAddr = "10.244.1.2:40000".parse().unwrap();
    let line = |i: u64| {
        tracing::info!(
            target: "access",
            method = "GET",
            path = "/productpage",
            status = 200u64,
            src = %src,
            src_principal = %"spiffe://cluster.local/ns/default/sa/client",
            bytes_sent = i,
            duration_ms = format_args!("{:.2}", i as f64 / 7.0),
            "request"
        )
    };
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..10 {
            line(i);
        }
        let before = dhat::HeapStats::get().total_blocks;
        for i in 0..1000 {
            line(i);
        }
        let allocations = dhat::HeapStats::get().total_blocks - before;
        assert_eq!(allocations, 0, "allocations for 1,000 warm lines");
    });
}
