//! Stage 8: the response on its way back: a local answer made a response, its status and
//! `grpc-status` recorded, hop-by-hop headers removed, and the body metered so the request's
//! metrics, access-log line and span are recorded when it ends.

use http::Response;
use http::header::{self, HeaderMap, HeaderName};
use http_body_util::BodyExt;

use super::Answer;
use crate::telemetry::{MeteredBody, RequestLog};
use crate::upstream::Body;

/// Headers that describe one hop's connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// The response to send downstream, carrying the request's record to its end.
pub fn finish(answer: Result<Response<Body>, Answer>, mut log: RequestLog) -> Response<Body> {
    let (parts, body) = settle(answer, &mut log).into_parts();
    Response::from_parts(parts, MeteredBody::new(body, log).boxed())
}

/// The response, recorded in `log` and stripped of hop-by-hop headers.
pub(super) fn settle(
    answer: Result<Response<Body>, Answer>,
    log: &mut RequestLog,
) -> Response<Body> {
    let mut response = match answer {
        Ok(r) | Err(Answer::Response(r)) => r,
        Err(Answer::Local(local)) => {
            log.flags = local.flags;
            local.response()
        }
    };
    log.status = response.status().as_u16();
    if let Some(s) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        log.grpc_status = Some(s.to_string());
    }
    strip_hop_by_hop(response.headers_mut());
    response
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(n);
    }
    // `te: trailers` must reach gRPC servers; any other TE value is hop-by-hop.
    if headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http::header::CONTENT_TYPE;

    use super::*;
    use crate::pipeline::testing::{Fixture, get};
    use crate::pipeline::{Local, full};

    fn response(headers: &[(&str, &str)]) -> Response<Body> {
        let mut r = Response::new(full("ok"));
        for (k, v) in headers {
            r.headers_mut().append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::try_from(*v).unwrap(),
            );
        }
        r
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_te_trailers_kept() {
        let mut h = response(&[
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "secret"),
            ("te", "trailers"),
            ("x-end-to-end", "kept"),
        ])
        .into_parts()
        .0
        .headers;
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["te", "x-end-to-end"]);
        let mut h = response(&[("te", "gzip")]).into_parts().0.headers;
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn an_upstream_response_is_recorded_and_stripped() {
        let f = Fixture::new();
        let mut log = f.exchange(get("/")).log;
        let r = settle(
            Ok(response(&[("grpc-status", "0"), ("connection", "close")])),
            &mut log,
        );
        assert_eq!((log.status, log.grpc_status.as_deref()), (200, Some("0")));
        assert_eq!(log.flags, "-");
        assert!(!r.headers().contains_key(header::CONNECTION));
        assert_eq!(r.headers()["grpc-status"], "0");
    }

    #[test]
    fn a_local_answer_sets_status_flags_and_body() {
        let f = Fixture::new();
        let mut log = f.exchange(get("/")).log;
        let r = settle(Err(Answer::Local(Local::NO_HEALTHY_UPSTREAM)), &mut log);
        assert_eq!((log.status, log.flags), (503, "UH"));
        assert_eq!(log.grpc_status, None);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain");
        let r = settle(Err(Answer::Local(Local::NO_ROUTE)), &mut log);
        assert!(!r.headers().contains_key(CONTENT_TYPE), "no body, no type");
    }

    #[test]
    fn an_answered_response_keeps_the_flags_its_stage_set() {
        let f = Fixture::new();
        let mut log = f.exchange(get("/")).log;
        log.flags = "FI";
        let mut abort = response(&[("grpc-status", "14")]);
        *abort.status_mut() = http::StatusCode::OK;
        let r = settle(Err(Answer::Response(abort)), &mut log);
        assert_eq!(r.status(), 200);
        assert_eq!(
            (log.status, log.flags, log.grpc_status.as_deref()),
            (200, "FI", Some("14"))
        );
    }

    #[tokio::test]
    async fn the_body_is_metered() {
        let f = Fixture::new();
        let log = f.exchange(get("/")).log;
        let r = finish(Ok(response(&[])), log);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
    }
}
