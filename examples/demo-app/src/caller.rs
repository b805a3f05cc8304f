//! `echo --call URL`: a service that also depends on others. One loop per upstream sends a GET
//! every `--call-interval-ms`, so that a generated mesh carries traffic on every edge of its
//! call graph without a client per edge.

use std::time::Duration;

use crate::client::{self, RequestSpec};

/// Calls `url` every `interval` until the task is dropped. Prints the first outcome and every
/// change between succeeding and failing (not every request: a mesh of 200 edges would flood
/// the logs).
pub async fn call_forever(url: String, interval: Duration) {
    let spec = RequestSpec::get(url.clone());
    let mut tick = tokio::time::interval(interval);
    // A slow upstream delays the next call rather than bunching the missed ones up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok: Option<bool> = None;
    loop {
        tick.tick().await;
        let outcome = match client::send(&spec).await {
            Ok(response) if response.status.is_success() => Ok(()),
            Ok(response) => Err(format!("status {}", response.status.as_u16())),
            Err(e) => Err(e.to_string()),
        };
        let ok = outcome.is_ok();
        if last_ok != Some(ok) {
            match outcome {
                Ok(()) => println!("demo-app: calling {url}: ok"),
                Err(why) => println!("demo-app: calling {url}: {why}"),
            }
            last_ok = Some(ok);
        }
    }
}
