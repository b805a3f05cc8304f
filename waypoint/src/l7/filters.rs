//! Route and backend filters (Gateway API `HTTPRouteFilter`): request header edits and URL
//! rewrites applied in order, redirects answered instead of forwarding, mirrors reported to
//! the caller, and response header edits.

use ambient_proto::ambient::waypoint::v1 as pb;
use http::header::{HOST, LOCATION};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use pb::filter::Kind as FilterKind;
use pb::path_modifier::Kind as PathKind;
use rand::RngCore;

use super::backend::BackendRef;
use super::matcher::{PathCapture, check_path};
use super::{Problem, chance};

/// Why a filter could not be applied to a request (the proxy answers 500).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("prefix rewrite of a request that no prefix match selected")]
    NoPrefixCaptured,
    #[error("the rewritten URI is invalid")]
    Uri,
}

/// Header edits (`HeaderModifier`), applied remove → set → add (Envoy's order).
#[derive(Clone, Debug, Default)]
pub struct HeaderEdit {
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
    remove: Box<[HeaderName]>,
}

fn header_pairs(
    headers: &[pb::Header],
    problems: &mut Vec<Problem>,
) -> Box<[(HeaderName, HeaderValue)]> {
    headers
        .iter()
        .filter_map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| problems.push(Problem::HeaderName(h.name.clone())))
                .ok()?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| problems.push(Problem::HeaderValue(h.name.clone())))
                .ok()?;
            Some((name, value))
        })
        .collect()
}

impl HeaderEdit {
    fn compile(m: &pb::HeaderModifier, problems: &mut Vec<Problem>) -> Self {
        HeaderEdit {
            set: header_pairs(&m.set, problems),
            add: header_pairs(&m.add, problems),
            remove: m
                .remove
                .iter()
                .filter_map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| problems.push(Problem::HeaderName(n.clone())))
                        .ok()
                })
                .collect(),
        }
    }

    /// Applies the edits to a header map.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A path modifier (`ReplaceFullPath` / `ReplacePrefixMatch`).
#[derive(Clone, Debug)]
enum PathRewrite {
    Full(Box<str>),
    /// Stored without trailing `/`: `/xyz/` and `/xyz` replace alike, `/` replaces with ``.
    Prefix(Box<str>),
}

impl PathRewrite {
    fn compile(m: &pb::PathModifier) -> Result<Self, Problem> {
        match &m.kind {
            Some(PathKind::ReplaceFullPath(p)) => {
                check_path(p)?;
                Ok(PathRewrite::Full(p.as_str().into()))
            }
            Some(PathKind::ReplacePrefixMatch(p)) => {
                if !p.is_empty() {
                    check_path(p)?;
                }
                Ok(PathRewrite::Prefix(p.trim_end_matches('/').into()))
            }
            None => Err(Problem::Unknown),
        }
    }

    /// The new path for `path`, following Gateway API's `ReplacePrefixMatch` table: the
    /// matched prefix's segments are replaced, the remaining segments kept, and an empty
    /// result is `/`.
    fn rewrite(&self, path: &str, capture: PathCapture<'_>) -> Result<String, FilterError> {
        match self {
            PathRewrite::Full(p) => Ok(p.to_string()),
            PathRewrite::Prefix(replacement) => {
                let PathCapture::Prefix(prefix) = capture else {
                    return Err(FilterError::NoPrefixCaptured);
                };
                let rest = path
                    .strip_prefix(prefix)
                    .ok_or(FilterError::NoPrefixCaptured)?;
                let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
                out.push_str(replacement);
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                Ok(out)
            }
        }
    }
}

/// A URL rewrite (`URLRewrite`): hostname and/or path, before forwarding.
#[derive(Clone, Debug)]
struct Rewrite {
    hostname: Option<(Authority, HeaderValue)>,
    path: Option<PathRewrite>,
}

/// A redirect (`RequestRedirect`): the request is answered with a `Location`.
#[derive(Clone, Debug)]
struct Redirect {
    scheme: Option<&'static str>,
    hostname: Option<Box<str>>,
    path: Option<PathRewrite>,
    port: Option<u16>,
    status: StatusCode,
}

fn hostname(h: &str) -> Result<(Authority, HeaderValue), Problem> {
    let bad = || Problem::Hostname(h.to_string());
    let authority: Authority = h.parse().map_err(|_| bad())?;
    if authority.port().is_some() || h.contains('@') || h.is_empty() {
        return Err(bad());
    }
    let value = HeaderValue::from_str(h).map_err(|_| bad())?;
    Ok((authority, value))
}

impl Redirect {
    fn compile(r: &pb::Redirect) -> Result<Self, Problem> {
        let scheme = match r.scheme.to_ascii_lowercase().as_str() {
            "" => None,
            "http" => Some("http"),
            "https" => Some("https"),
            _ => return Err(Problem::Scheme(r.scheme.clone())),
        };
        let hostname = match r.hostname.as_str() {
            "" => None,
            h => {
                hostname(h)?;
                Some(h.into())
            }
        };
        let port = match r.port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| Problem::Port(p.to_string()))?),
        };
        // Gateway API's default; the only codes it allows.
        let status = match r.status_code {
            0 => StatusCode::FOUND,
            s @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(s as u16).expect("valid"),
            s => return Err(Problem::RedirectStatus(s)),
        };
        Ok(Redirect {
            scheme,
            hostname,
            path: r.path.as_ref().map(PathRewrite::compile).transpose()?,
            port,
            status,
        })
    }
}

/// A request copy to send to another backend (`RequestMirror`), its answer ignored.
#[derive(Clone, Debug)]
pub struct Mirror {
    /// Where the copy goes.
    pub target: BackendRef,
    percent: f64,
}

impl Mirror {
    /// Whether this request is mirrored (the configured percentage, fractions kept).
    pub fn sampled(&self, rng: &mut (impl RngCore + ?Sized)) -> bool {
        chance(rng, self.percent)
    }
}

/// One step of request processing, in configured order.
#[derive(Clone, Debug)]
enum RequestStep {
    Headers(HeaderEdit),
    Rewrite(Rewrite),
}

/// The filters of a route or of a backend, compiled: what the proxy applies to a request on
/// its way up and to the response on its way back.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    request: Box<[RequestStep]>,
    response: Box<[HeaderEdit]>,
    redirect: Option<Redirect>,
    mirrors: Box<[Mirror]>,
}

impl Filters {
    /// Compiles a filter list. Filters that cannot be compiled are left out and reported: the
    /// caller must then refuse the route (Gateway API: a filter that cannot be applied must not
    /// be skipped; its requests get a 500).
    pub fn compile(filters: &[pb::Filter]) -> (Self, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut request = Vec::new();
        let mut response = Vec::new();
        let mut redirect = None;
        let mut mirrors = Vec::new();
        let mut rewrites = 0;
        let mut redirects = 0;
        for f in filters {
            match &f.kind {
                Some(FilterKind::RequestHeaders(m)) => {
                    request.push(RequestStep::Headers(HeaderEdit::compile(m, &mut problems)));
                }
                Some(FilterKind::ResponseHeaders(m)) => {
                    response.push(HeaderEdit::compile(m, &mut problems));
                }
                Some(FilterKind::Rewrite(r)) => {
                    rewrites += 1;
                    let host = match r.hostname.as_str() {
                        "" => None,
                        h => hostname(h).map_err(|p| problems.push(p)).ok(),
                    };
                    let path = r
                        .path
                        .as_ref()
                        .and_then(|p| PathRewrite::compile(p).map_err(|e| problems.push(e)).ok());
                    request.push(RequestStep::Rewrite(Rewrite {
                        hostname: host,
                        path,
                    }));
                }
                Some(FilterKind::Redirect(r)) => {
                    redirects += 1;
                    match Redirect::compile(r) {
                        Ok(r) => redirect = Some(r),
                        Err(p) => problems.push(p),
                    }
                }
                Some(FilterKind::Mirror(m)) => match m.backend.as_ref().map(BackendRef::compile) {
                    Some(Ok(target)) => mirrors.push(Mirror {
                        target,
                        percent: m.percent,
                    }),
                    Some(Err(p)) => problems.push(p),
                    None => problems.push(Problem::Backend(String::new())),
                },
                None => problems.push(Problem::Unknown),
            }
        }
        if redirects > 1 || (redirects > 0 && rewrites > 0) {
            problems.push(Problem::ConflictingFilters);
        }
        let filters = Filters {
            request: request.into(),
            response: response.into(),
            redirect,
            mirrors: mirrors.into(),
        };
        (filters, problems)
    }

    /// Whether a path modifier replaces the prefix match (the route must then match by
    /// prefix only).
    pub(crate) fn uses_prefix_rewrite(&self) -> bool {
        let rewrites = self.request.iter().any(|s| {
            matches!(
                s,
                RequestStep::Rewrite(Rewrite {
                    path: Some(PathRewrite::Prefix(_)),
                    ..
                })
            )
        });
        let redirects = matches!(
            self.redirect,
            Some(Redirect {
                path: Some(PathRewrite::Prefix(_)),
                ..
            })
        );
        rewrites || redirects
    }

    pub(crate) fn has_redirect(&self) -> bool {
        self.redirect.is_some()
    }

    /// The redirect to answer with instead of forwarding, if the filters redirect.
    ///
    /// `Location` is built as Gateway API specifies: scheme, hostname and path default to the
    /// request's (hostname without its port; path rewritten by the modifier, query kept); the
    /// port is the configured one, else the scheme's well-known port when the scheme is
    /// configured (80 / 443), else `listener_port` (the service port the request was sent to).
    /// The port is left out when it is the scheme's default. The status defaults to 302.
    pub fn redirect(
        &self,
        req: &http::request::Parts,
        capture: PathCapture<'_>,
        listener_port: u16,
    ) -> Option<Result<http::Response<()>, FilterError>> {
        let r = self.redirect.as_ref()?;
        Some(build_redirect(r, req, capture, listener_port))
    }

    /// Applies header edits and URL rewrites in order. `capture` is what the route's path
    /// match captured ([`super::route::Selected::capture`]).
    pub fn apply_request(
        &self,
        req: &mut http::request::Parts,
        capture: PathCapture<'_>,
    ) -> Result<(), FilterError> {
        for step in &self.request {
            match step {
                RequestStep::Headers(edit) => edit.apply(&mut req.headers),
                RequestStep::Rewrite(rw) => {
                    if let Some((authority, value)) = &rw.hostname {
                        req.headers.insert(HOST, value.clone());
                        if req.uri.authority().is_some() {
                            let mut parts = std::mem::take(&mut req.uri).into_parts();
                            parts.authority = Some(authority.clone());
                            req.uri = Uri::from_parts(parts).map_err(|_| FilterError::Uri)?;
                        }
                    }
                    if let Some(path) = &rw.path {
                        let new_path = path.rewrite(req.uri.path(), capture)?;
                        let with_query = with_query(new_path, req.uri.query());
                        let mut parts = std::mem::take(&mut req.uri).into_parts();
                        parts.path_and_query =
                            Some(PathAndQuery::try_from(with_query).map_err(|_| FilterError::Uri)?);
                        req.uri = Uri::from_parts(parts).map_err(|_| FilterError::Uri)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Requests copies to send: each mirror's target when [`Mirror::sampled`] says so.
    pub fn mirrors(&self) -> &[Mirror] {
        &self.mirrors
    }

    /// Applies the response header edits (also to a redirect this route answered with).
    pub fn apply_response(&self, headers: &mut HeaderMap) {
        for edit in &self.response {
            edit.apply(headers);
        }
    }

    /// No filter at all: the proxy can skip every call.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty()
            && self.response.is_empty()
            && self.redirect.is_none()
            && self.mirrors.is_empty()
    }
}

fn with_query(mut path: String, query: Option<&str>) -> String {
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    path
}

/// The request's host without port: `Host`, else the URI's authority.
fn request_host(req: &http::request::Parts) -> Option<&str> {
    let raw = match req.headers.get(HOST).and_then(|v| v.to_str().ok()) {
        Some(h) => h,
        None => req.uri.authority()?.as_str(),
    };
    let host = if raw.starts_with('[') {
        &raw[..=raw.find(']')?]
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    (!host.is_empty()).then_some(host)
}

/// Appends `s`, percent-encoding every byte above 0x7F (ASCII passes unchanged).
fn push_escaped(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xF)] as char);
            }
        }
    }
}

fn build_redirect(
    r: &Redirect,
    req: &http::request::Parts,
    capture: PathCapture<'_>,
    listener_port: u16,
) -> Result<http::Response<()>, FilterError> {
    let scheme = r.scheme.unwrap_or_else(|| match req.uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    });
    let host = match &r.hostname {
        Some(h) => &**h,
        None => request_host(req).ok_or(FilterError::Uri)?,
    };
    let port = match (r.port, r.scheme) {
        (Some(p), _) => p,
        (None, Some("https")) => 443,
        (None, Some(_)) => 80,
        (None, None) => listener_port,
    };
    let path = match &r.path {
        Some(rw) => rw.rewrite(req.uri.path(), capture)?,
        None => req.uri.path().to_string(),
    };
    let mut location = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
    location.push_str(scheme);
    location.push_str("://");
    if host.contains(':') && !host.starts_with('[') {
        location.push('[');
        location.push_str(host);
        location.push(']');
    } else {
        location.push_str(host);
    }
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    if !default_port {
        location.push(':');
        location.push_str(&port.to_string());
    }
    // A path may carry raw UTF-8 (the URI parser lets bytes above 0x7F through); a `Location`
    // must be ASCII for every client to read it, so such bytes are percent-encoded.
    push_escaped(&mut location, &path);
    if let Some(q) = req.uri.query() {
        location.push('?');
        push_escaped(&mut location, q);
    }
    // A Host header can hold what no URI authority may (`a]b`, spaces): such a request gets
    // no `Location` that a client could not follow.
    Uri::try_from(location.as_str()).map_err(|_| FilterError::Uri)?;
    let value = HeaderValue::try_from(location).map_err(|_| FilterError::Uri)?;
    let mut response = http::Response::new(());
    *response.status_mut() = r.status;
    response.headers_mut().insert(LOCATION, value);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn parts(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn compile(filters: Vec<FilterKind>) -> Filters {
        let (f, problems) = Filters::compile(
            &filters
                .into_iter()
                .map(|k| pb::Filter { kind: Some(k) })
                .collect::<Vec<_>>(),
        );
        assert!(problems.is_empty(), "{problems:?}");
        f
    }

    fn header(name: &str, value: &str) -> pb::Header {
        pb::Header {
            name: name.into(),
            value: value.into(),
        }
    }

    fn prefix_rewrite(to: &str) -> FilterKind {
        FilterKind::Rewrite(pb::Rewrite {
            hostname: String::new(),
            path: Some(pb::PathModifier {
                kind: Some(PathKind::ReplacePrefixMatch(to.into())),
            }),
        })
    }

    #[test]
    fn header_edits_in_order() {
        let f = compile(vec![
            FilterKind::RequestHeaders(pb::HeaderModifier {
                set: vec![header("X-Set", "new")],
                add: vec![header("x-add", "2")],
                remove: vec!["x-drop".into()],
            }),
            // A later filter sees the earlier one's result.
            FilterKind::RequestHeaders(pb::HeaderModifier {
                set: vec![],
                add: vec![],
                remove: vec!["x-add".into()],
            }),
        ]);
        let mut p = parts("/", None);
        p.headers.insert("x-set", HeaderValue::from_static("old"));
        p.headers.append("x-set", HeaderValue::from_static("older"));
        p.headers.insert("x-drop", HeaderValue::from_static("1"));
        f.apply_request(&mut p, PathCapture::Whole).unwrap();
        assert_eq!(
            p.headers.get_all("x-set").iter().collect::<Vec<_>>(),
            ["new"]
        );
        assert!(p.headers.get("x-drop").is_none() && p.headers.get("x-add").is_none());

        let f = compile(vec![FilterKind::RequestHeaders(pb::HeaderModifier {
            set: vec![],
            add: vec![header("x-add", "2")],
            remove: vec![],
        })]);
        let mut p = parts("/", None);
        p.headers.insert("x-add", HeaderValue::from_static("1"));
        f.apply_request(&mut p, PathCapture::Whole).unwrap();
        assert_eq!(
            p.headers.get_all("x-add").iter().collect::<Vec<_>>(),
            ["1", "2"]
        );
    }

    #[test]
    fn bad_header_names_are_problems() {
        let (_, problems) = Filters::compile(&[pb::Filter {
            kind: Some(FilterKind::RequestHeaders(pb::HeaderModifier {
                set: vec![header("bad name", "v"), header("ok", "bad\nvalue")],
                add: vec![],
                remove: vec![":authority".into()],
            })),
        }]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        let (_, problems) = Filters::compile(&[pb::Filter { kind: None }]);
        assert_eq!(problems, [Problem::Unknown]);
    }

    #[test]
    fn replace_prefix_match_follows_gateway_api_table() {
        // (request path, matched prefix as configured, replacement, expected)
        let table = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/foo/bar", "/", "/xyz", "/xyz/foo/bar"),
        ];
        for (path, prefix, replacement, want) in table {
            let f = compile(vec![prefix_rewrite(replacement)]);
            let mut p = parts(&format!("http://svc:8080{path}?q=1"), None);
            let matched = prefix.trim_end_matches('/');
            f.apply_request(&mut p, PathCapture::Prefix(matched))
                .unwrap();
            assert_eq!(p.uri.path(), want, "{path} {prefix} {replacement}");
            assert_eq!(p.uri.query(), Some("q=1"));
            assert_eq!(p.uri.authority().unwrap(), "svc:8080");
        }
        // Without a prefix capture the rewrite cannot be applied.
        let f = compile(vec![prefix_rewrite("/x")]);
        let mut p = parts("/foo", None);
        assert_eq!(
            f.apply_request(&mut p, PathCapture::Whole),
            Err(FilterError::NoPrefixCaptured)
        );
    }

    #[test]
    fn full_path_and_hostname_rewrite() {
        let f = compile(vec![FilterKind::Rewrite(pb::Rewrite {
            hostname: "new.example.com".into(),
            path: Some(pb::PathModifier {
                kind: Some(PathKind::ReplaceFullPath("/replaced".into())),
            }),
        })]);
        let mut p = parts("http://old:80/a/b?x=y", Some("old:80"));
        f.apply_request(&mut p, PathCapture::Whole).unwrap();
        assert_eq!(p.uri.to_string(), "http://new.example.com/replaced?x=y");
        assert_eq!(p.headers[HOST], "new.example.com");
        // Origin-form (HTTP/1): only Host changes.
        let mut p = parts("/a", Some("old"));
        f.apply_request(&mut p, PathCapture::Whole).unwrap();
        assert_eq!(p.uri.to_string(), "/replaced");
        assert_eq!(p.headers[HOST], "new.example.com");
    }

    fn redirect(r: pb::Redirect) -> Filters {
        compile(vec![FilterKind::Redirect(r)])
    }

    fn location(
        f: &Filters,
        p: &http::request::Parts,
        capture: PathCapture<'_>,
        port: u16,
    ) -> (u16, String) {
        let resp = f.redirect(p, capture, port).unwrap().unwrap();
        (
            resp.status().as_u16(),
            resp.headers()[LOCATION].to_str().unwrap().to_string(),
        )
    }

    #[test]
    fn redirect_location_and_defaults() {
        // Default status 302; scheme and host from the request; the listener port, shown.
        let f = redirect(pb::Redirect::default());
        let p = parts("/a?b=c", Some("reviews:9080"));
        assert_eq!(
            location(&f, &p, PathCapture::Whole, 9080),
            (302, "http://reviews:9080/a?b=c".into())
        );
        // Listener port 80 over http is left out.
        assert_eq!(
            location(&f, &p, PathCapture::Whole, 80).1,
            "http://reviews/a?b=c"
        );

        // A scheme without a port: the scheme's port, left out.
        let f = redirect(pb::Redirect {
            scheme: "https".into(),
            status_code: 301,
            ..Default::default()
        });
        assert_eq!(
            location(&f, &p, PathCapture::Whole, 9080),
            (301, "https://reviews/a?b=c".into())
        );

        // Hostname, explicit port, prefix path replacement.
        let f = redirect(pb::Redirect {
            scheme: "https".into(),
            hostname: "example.com".into(),
            port: 8443,
            path: Some(pb::PathModifier {
                kind: Some(PathKind::ReplacePrefixMatch("/new".into())),
            }),
            status_code: 0,
        });
        let p = parts("/old/x", Some("reviews"));
        assert_eq!(
            location(&f, &p, PathCapture::Prefix("/old"), 9080).1,
            "https://example.com:8443/new/x"
        );

        // http with explicit port 443 keeps it.
        let f = redirect(pb::Redirect {
            scheme: "http".into(),
            port: 443,
            ..Default::default()
        });
        assert_eq!(
            location(&f, &p, PathCapture::Whole, 9080).1,
            "http://reviews:443/old/x"
        );

        // IPv6 host from the authority.
        let f = redirect(pb::Redirect::default());
        let p = parts("http://[fd00::1]:8080/p", None);
        assert_eq!(
            location(&f, &p, PathCapture::Whole, 8080).1,
            "http://[fd00::1]:8080/p"
        );
    }

    #[test]
    fn redirect_problems() {
        for r in [
            pb::Redirect {
                status_code: 200,
                ..Default::default()
            },
            pb::Redirect {
                scheme: "ftp".into(),
                ..Default::default()
            },
            pb::Redirect {
                hostname: "a b".into(),
                ..Default::default()
            },
            pb::Redirect {
                port: 70_000,
                ..Default::default()
            },
        ] {
            let (f, problems) = Filters::compile(&[pb::Filter {
                kind: Some(FilterKind::Redirect(r)),
            }]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(!f.has_redirect());
        }
        let (_, problems) = Filters::compile(&[
            pb::Filter {
                kind: Some(FilterKind::Redirect(pb::Redirect::default())),
            },
            pb::Filter {
                kind: Some(prefix_rewrite("/x")),
            },
        ]);
        assert_eq!(problems, [Problem::ConflictingFilters]);
    }

    #[test]
    fn response_headers_and_mirrors() {
        let f = compile(vec![
            FilterKind::ResponseHeaders(pb::HeaderModifier {
                set: vec![header("x-resp", "1")],
                add: vec![],
                remove: vec!["server".into()],
            }),
            FilterKind::Mirror(pb::Mirror {
                backend: Some(pb::Backend {
                    service: "ns/shadow.ns.svc.cluster.local".into(),
                    port: 80,
                    weight: 1,
                    filters: vec![],
                }),
                percent: 25.0,
            }),
        ]);
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("app"));
        f.apply_response(&mut h);
        assert_eq!(h["x-resp"], "1");
        assert!(h.get("server").is_none());

        let [m] = f.mirrors() else { panic!() };
        assert_eq!(&*m.target.service, "ns/shadow.ns.svc.cluster.local");
        let mut rng = SmallRng::seed_from_u64(1);
        let n = 40_000;
        let hits = (0..n).filter(|_| m.sampled(&mut rng)).count();
        // Expected 10000, sd ≈ 86.6.
        assert!((9_560..=10_440).contains(&hits), "{hits}");
    }

    /// Found by the CI fuzz smoke (fuzz/fuzz_targets/http_route.rs): a request path holding
    /// raw UTF-8 was copied into `Location` as is, a header value no client reads as text.
    #[test]
    fn redirect_percent_encodes_what_is_not_ascii() {
        let f = compile(vec![FilterKind::Redirect(pb::Redirect::default())]);
        let req = parts("/caf\u{e9}/\u{1F600}?q=\u{fc}", Some("web.shop"));
        let r = f.redirect(&req, PathCapture::Whole, 80).unwrap().unwrap();
        let location = r.headers()[LOCATION].to_str().expect("Location is text");
        assert_eq!(location, "http://web.shop/caf%C3%A9/%F0%9F%98%80?q=%C3%BC");
    }

    /// Found by fuzz/fuzz_targets/http_route.rs: a Host header that no URI authority may
    /// hold was copied into `Location`, answering with a redirect no client can follow.
    #[test]
    fn redirect_from_a_host_that_is_no_authority_fails() {
        let f = compile(vec![FilterKind::Redirect(pb::Redirect {
            status_code: 301,
            ..Default::default()
        })]);
        let req = parts("/a", Some("web.shop.svc.cluster.]ocal"));
        let r = f.redirect(&req, PathCapture::Whole, 80).unwrap();
        assert_eq!(r.unwrap_err(), FilterError::Uri);
        let req = parts("/a", Some("web.shop"));
        let r = f.redirect(&req, PathCapture::Whole, 80).unwrap().unwrap();
        assert_eq!(r.headers()[LOCATION], "http://web.shop/a");
    }
}
