//! Waiting on what a test expects to happen, for at most a deadline.

use std::time::{Duration, Instant};

/// Calls `check` until it returns `Ok`, every 250 ms, for at most `timeout`; then panics with
/// `what` and the last error.
pub fn until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > timeout => panic!("{what}: not in {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}
