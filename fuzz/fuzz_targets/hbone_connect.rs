//! The head of an HBONE `CONNECT` request as the HBONE server reads it (ztunnel's and the
//! waypoint's inbound): where the tunnel should lead (`:authority` as `ip:port`,
//! `ambient_proto::hbone::connect_authority`) and the original client address
//! (`forwarded: for=...`, `ambient_proto::hbone::forwarded_for`).
//!
//! Input, as text: the first line is `METHOD AUTHORITY`, each further line a header
//! `name: value`. Whatever h2 would refuse to carry (an invalid method, authority, header
//! name or value) is skipped, as it never reaches the server's handler.
//!
//! Checks: only `CONNECT` yields a destination; a destination read is the authority's own
//! address (it prints back to something that parses to it); and what our client writes for
//! that destination and client address (`ConnectRequest::to_http`), the server reads back
//! unchanged.

#![no_main]

use std::net::SocketAddr;

use ambient_proto::hbone::{ConnectRequest, connect_authority, forwarded_for};
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, Uri};
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let (method, authority) = first.split_once(' ').unwrap_or((first, ""));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    // h2 hands the server a CONNECT's `:authority` as an authority-form URI.
    let uri = match Authority::try_from(authority) {
        Ok(a) => {
            let mut parts = http::uri::Parts::default();
            parts.authority = Some(a);
            Uri::from_parts(parts).expect("an authority alone is a URI")
        }
        Err(_) => match Uri::try_from(authority) {
            Ok(u) => u,
            Err(_) => return,
        },
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_bytes(value.trim().as_bytes()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }

    let destination = connect_authority(&method, &uri);
    let client = forwarded_for(&headers);
    if let Ok(dst) = destination {
        assert_eq!(method, Method::CONNECT, "a destination from a {method}");
        let raw = uri
            .authority()
            .expect("a destination from no authority")
            .as_str();
        let reparsed: SocketAddr = raw.parse().expect("read from the authority");
        assert_eq!(reparsed, dst);
        let printed: SocketAddr = dst.to_string().parse().expect("an address prints back");
        assert_eq!(printed, dst);
    }

    // Our client's request for what was read, read back by our server.
    let dst = destination.unwrap_or_else(|_| SocketAddr::from(([10, 244, 1, 10], 9080)));
    let mut request = ConnectRequest::new(dst);
    request.forwarded_for = client;
    request.baggage = headers
        .get("baggage")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    request.traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let sent = request
        .to_http()
        .expect("the client can send any destination, client address and valid header");
    let read = connect_authority(sent.method(), sent.uri())
        .expect("the server reads what the client sent");
    assert_eq!((read.ip(), read.port()), (dst.ip(), dst.port()));
    assert_eq!(
        forwarded_for(sent.headers()),
        client,
        "forwarded for lost in transit"
    );
});
