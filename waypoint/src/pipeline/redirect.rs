//! Stage 5: the route's redirect, answered instead of forwarding (with the route's response
//! header edits); otherwise the route's request filters (header edits, URL rewrites).

use bytes::Bytes;
use http::Response;

use super::route::Routed;
use super::{Answer, Exchange, Local, full};

/// Answers a redirect, or rewrites the request for the backend stage. A redirect that cannot
/// be built, or a filter that cannot be applied, is a 500.
#[expect(
    clippy::result_large_err,
    reason = "the large error is the redirect response itself, moved once; boxing it would cost \
              an allocation"
)]
pub fn apply<B>(x: &mut Exchange<'_, B>, routed: Routed<'_>) -> Result<(), Answer> {
    let filters = &routed.route.filters;
    if let Some(redirect) = filters.redirect(&x.parts, routed.capture, x.port()) {
        let (mut parts, ()) = redirect.map_err(|_| Local::REDIRECT_FAILED)?.into_parts();
        filters.apply_response(&mut parts.headers);
        return Err(Answer::Response(Response::from_parts(
            parts,
            full(Bytes::new()),
        )));
    }
    filters
        .apply_request(&mut x.parts, routed.capture)
        .map_err(|_| Local::FILTER_FAILED)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use ambient_proto::ambient::waypoint::v1 as pb;
    use http::header::{HOST, LOCATION};
    use pb::filter::Kind;

    use super::*;
    use crate::l7::matcher::PathCapture;
    use crate::pipeline::route::{Decision, select};
    use crate::pipeline::testing::{Fixture, get, path_prefix};

    fn header_edit(name: &str, value: &str) -> pb::HeaderModifier {
        pb::HeaderModifier {
            set: vec![pb::Header {
                name: name.into(),
                value: value.into(),
            }],
            ..Default::default()
        }
    }

    fn with_filters(filters: Vec<Kind>) -> Fixture {
        Fixture::one_route(|r| {
            r.matches = vec![path_prefix("/old")];
            r.filters = filters
                .into_iter()
                .map(|k| pb::Filter { kind: Some(k) })
                .collect();
        })
    }

    fn prefix_rewrite(to: &str) -> Option<pb::PathModifier> {
        Some(pb::PathModifier {
            kind: Some(pb::path_modifier::Kind::ReplacePrefixMatch(to.into())),
        })
    }

    /// Routes the request, then runs this stage.
    fn run<'r>(
        f: &'r Fixture,
        req: http::Request<http_body_util::Full<Bytes>>,
    ) -> (
        crate::pipeline::Exchange<'r, http_body_util::Full<Bytes>>,
        Result<(), Answer>,
    ) {
        let mut x = f.exchange(req);
        let Ok(Decision::Route(routed)) = select(&mut x) else {
            panic!("routed")
        };
        let result = apply(&mut x, routed);
        (x, result)
    }

    #[test]
    fn a_redirect_answers_with_response_filters_applied() {
        let f = with_filters(vec![
            Kind::Redirect(pb::Redirect {
                path: prefix_rewrite("/new"),
                status_code: 301,
                ..Default::default()
            }),
            Kind::ResponseHeaders(header_edit("x-moved", "yes")),
        ]);
        let (_, result) = run(&f, get("/old/page?q=1"));
        let Err(Answer::Response(r)) = result else {
            panic!("redirected")
        };
        assert_eq!(r.status(), 301);
        assert_eq!(r.headers()[LOCATION], "http://web.shop/new/page?q=1");
        assert_eq!(r.headers()["x-moved"], "yes");
    }

    #[test]
    fn a_redirect_that_cannot_be_built_is_500() {
        let f = with_filters(vec![Kind::Redirect(pb::Redirect::default())]);
        let mut req = get("/old");
        req.headers_mut().remove(HOST);
        let (_, result) = run(&f, req);
        let Err(Answer::Local(local)) = result else {
            panic!("failed")
        };
        assert_eq!(local, Local::REDIRECT_FAILED);
        assert_eq!(local.status.as_u16(), 500);
    }

    #[test]
    fn request_filters_rewrite_and_edit_headers() {
        let f = with_filters(vec![
            Kind::RequestHeaders(header_edit("x-env", "canary")),
            Kind::Rewrite(pb::Rewrite {
                hostname: "api.internal".into(),
                path: prefix_rewrite("/v2"),
            }),
        ]);
        let (x, result) = run(&f, get("/old/items?page=2"));
        assert!(result.is_ok());
        assert_eq!(x.parts.uri, "/v2/items?page=2");
        assert_eq!(x.parts.headers["x-env"], "canary");
        assert_eq!(x.parts.headers[HOST], "api.internal");
    }

    #[test]
    fn a_filter_that_cannot_be_applied_is_500() {
        let f = with_filters(vec![Kind::Rewrite(pb::Rewrite {
            hostname: String::new(),
            path: prefix_rewrite("/v2"),
        })]);
        let mut x = f.exchange(get("/old/items"));
        let Ok(Decision::Route(mut routed)) = select(&mut x) else {
            panic!("routed")
        };
        // A prefix rewrite needs what a prefix match captured.
        routed.capture = PathCapture::Whole;
        let Err(Answer::Local(local)) = apply(&mut x, routed) else {
            panic!("failed")
        };
        assert_eq!(local, Local::FILTER_FAILED);
        assert_eq!(local.body, "request filter failed");
    }
}
