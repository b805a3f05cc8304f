//! A proxy that records histogram samples and is never scraped must not keep them: the
//! recorder's upkeep drains them into the exported buckets. Measured on the heap itself
//! (dhat's counting allocator), so the test fails if the upkeep stops running.

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;

#[global_allocator]
static HEAP: dhat::Alloc = dhat::Alloc;

fn live_bytes() -> usize {
    dhat::HeapStats::get().curr_bytes
}

#[tokio::test(flavor = "current_thread")]
async fn unscraped_histogram_samples_are_released_by_the_upkeep() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let histogram = metrics::with_local_recorder(&recorder, || {
        metrics::histogram!("istio_request_duration_milliseconds")
    });

    let start = live_bytes();
    const SAMPLES: usize = 500_000;
    for i in 0..SAMPLES {
        histogram.record((i % 1000) as f64);
    }
    let queued = live_bytes() - start;
    assert!(
        queued >= SAMPLES * 8,
        "{SAMPLES} samples wait for a drain in {queued} bytes"
    );

    proxy_core::metrics::spawn_upkeep(handle.clone(), Duration::from_millis(10));
    // The drained queue is freed through an epoch collector, which runs as threads keep
    // touching it: keep recording (as live traffic does) until the heap is back down.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = live_bytes().saturating_sub(start);
        if held < queued / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {held} of {queued} bytes held 20 s after the upkeep started"
        );
        for _ in 0..1000 {
            histogram.record(1.0);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing was lost on the way: every sample is in the exported count.
    let text = handle.render();
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("istio_request_duration_milliseconds_count "))
        .expect("the histogram is exported");
    assert!(count.parse::<usize>().unwrap() >= SAMPLES, "{count}");
}
