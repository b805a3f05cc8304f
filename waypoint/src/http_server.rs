//! Serving HTTP on a tunnelled stream: hyper's server with limits that keep one abusive
//! client from costing others (header sizes, reset floods, slow headers).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tracing::debug;

use crate::context::Ctx;
use crate::inbound::{Downstream, Target};
use crate::pipeline;
use crate::rewind::Rewind;
use crate::stream::StreamIo;

/// Largest request head (request line + headers) accepted, HTTP/1 and HTTP/2 alike.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// A client must finish sending request headers within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per client connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// hyper's server as the waypoint configures it for every client connection.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

pub(crate) async fn serve(
    ctx: Arc<Ctx>,
    target: Target,
    downstream: Downstream,
    io: Rewind<StreamIo>,
) {
    let target = Arc::new(target);
    let downstream = Arc::new(downstream);
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        let target = target.clone();
        let downstream = downstream.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(ctx, target, downstream, req).await) }
    });
    if let Err(e) = builder().serve_connection(TokioIo::new(io), service).await {
        debug!(error = %e, "downstream HTTP connection ended");
    }
}
