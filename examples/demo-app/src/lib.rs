//! The demo application of `examples/bookinfo`: the productpage, reviews and ratings roles of
//! Istio's bookinfo over HTTP/1.1, `echo`, which describes any request it gets (HTTP/1.1 or
//! HTTP/2) and may call other services on a timer, `get`, a small curl to call them with,
//! and `otlp-sink`, which prints the spans an OTLP exporter (a waypoint) sends it.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod caller;
pub mod cli;
pub mod client;
pub mod echo;
pub mod files;
pub mod get;
pub mod model;
pub mod otlp_sink;
pub mod pod;
pub mod productpage;
pub mod ratings;
pub mod reviews;
pub mod route;
pub mod server;
pub mod tls;
pub mod upstream;
