//! A small load generator, and the servers it drives, for measuring a network path (here:
//! the mesh against direct TCP) from one process with no external tools.
//!
//! - [`http`]: HTTP/1.1 with keep-alive, written minimally so the generator costs little next
//!   to what it measures: a blocking client and a tokio server returning fixed-size bodies.
//! - [`drive`]: the load shapes: open loop at a fixed rate (latency corrected for
//!   coordinated omission), closed loop (maximum rate), connection churn (connect, one
//!   request, close).
//! - [`bulk`]: bulk streams for throughput (a source here, a sink on the server), and held
//!   idle connections (an echo server) for per-connection memory.
//! - [`latency`]: HDR histograms of latencies.
//!
//! The client side runs one OS thread per connection with blocking sockets: no event loop
//! between the wire and the clock, and `nanosleep` (with the timer slack cut to a
//! microsecond) to pace the open loop far finer than a millisecond timer wheel would. Where
//! sockets come from is up to the caller ([`Dial`]), so a benchmark can open them inside a
//! network namespace.
#![forbid(unsafe_code)]

pub mod bulk;
pub mod drive;
pub mod http;
pub mod latency;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

/// Opens one connection to the server under test (blocking), with `TCP_NODELAY` set.
pub type Dial = Arc<dyn Fn() -> std::io::Result<TcpStream> + Send + Sync>;

/// A [`Dial`] to `addr` from this process's own network namespace.
pub fn dial_addr(addr: SocketAddr) -> Dial {
    Arc::new(move || {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

pub use drive::{
    ClosedLoop, ClosedLoopReport, ConnectionRate, ConnectionRateReport, OpenLoop, OpenLoopReport,
    closed_loop, connection_rate, open_loop,
};
pub use latency::{Latency, Percentiles};
