//! A process a test runs beside it (a dashboard, Prometheus, a traffic loop).

use std::process::Child;

/// A child process killed when dropped, so that a failing test leaves nothing running.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
