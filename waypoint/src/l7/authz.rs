//! L7 authorization with Istio's `AuthorizationPolicy` semantics, for the policies that
//! target the waypoint's Gateway or a Service it serves.
//!
//! - Any matching DENY policy denies. Otherwise, if any ALLOW policy applies, one must match;
//!   with no ALLOW policy the request is allowed. Matching AUDIT policies are reported and do
//!   not change the result.
//! - A policy matches when one of its rules does (`match_all`: always; no rules: never). A
//!   rule matches when one of its sources, one of its operations and *all* its conditions do
//!   (Istio: "at least one source, one operation and all conditions"); an empty list passes.
//! - Within a source or operation every field set must match (values OR-ed) and no `not_*`
//!   value may match. An absent attribute (no peer identity) is matched as an empty value, so
//!   `principals: ["*"]` needs an identity and `not_principals: ["*"]` refuses one.
//! - Principals are matched without `spiffe://` (`cluster.local/ns/x/sa/y`), as Istio writes
//!   them. Hosts are matched ignoring case, and also without the request's port when the
//!   value has none. Paths are matched without query (normalize them first, see
//!   [`super::path::normalize`]).
//! - **Fail closed**: a rule that cannot be compiled (unknown condition key, bad CIDR or
//!   port, path template) never matches in an ALLOW or AUDIT policy and always matches in a
//!   DENY policy.
//!
//! Supported condition keys: `request.headers[<name>]` (any value of the header),
//! `source.ip`, `remote.ip` (same as `source.ip`), `source.namespace`, `source.principal`,
//! `destination.ip`, `destination.port`, `request.method`, `connection.sni` (always absent:
//! HBONE carries no SNI for the inner stream), and from the request's valid JWT (see
//! [`super::jwt`]; absent without one): `request.auth.principal` (`iss/sub`, what
//! `requestPrincipals` become), `request.auth.audiences`, `request.auth.presenter` and
//! `request.auth.claims[<name>]` (nested: `[<name>][<name>]`; any value of a list claim).

use std::cell::OnceCell;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambient_proto::ambient::waypoint::v1 as pb;
use ambient_proto::identity::Identity;
use http::header::HOST;
use http::{HeaderMap, HeaderName};

use super::jwt::Claims;
use super::matcher::Pattern;
use super::{ConfigError, Problem};

/// What authorization looks at in a request: the peer, the destination, and for HTTP the
/// request itself. Built once per request (or per TCP connection).
#[derive(Debug)]
pub struct RequestAttributes<'a> {
    identity: Option<&'a Identity>,
    /// `cluster.local/ns/x/sa/y`, formatted on first use.
    principal: OnceCell<String>,
    source_ip: Option<IpAddr>,
    destination: SocketAddr,
    /// `None` for a TCP connection: HTTP-only rule fields cannot be judged.
    http: Option<HttpAttributes<'a>>,
    /// The request's valid JWT, if it has one.
    auth: Option<&'a Claims>,
}

/// The HTTP part of [`RequestAttributes`].
#[derive(Clone, Copy, Debug)]
struct HttpAttributes<'a> {
    /// Host or authority, as the client sent it (may carry a port).
    host: &'a str,
    method: &'a str,
    /// Without query.
    path: &'a str,
    headers: &'a HeaderMap,
}

impl<'a> RequestAttributes<'a> {
    /// An HTTP request from a peer (`None`: no identity) at `source_ip`, sent to `destination`
    /// (the service address and port it addressed). Normalize the path first.
    pub fn http(
        identity: impl Into<Option<&'a Identity>>,
        source_ip: IpAddr,
        destination: SocketAddr,
        req: &'a http::request::Parts,
    ) -> Self {
        let host = req
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        RequestAttributes {
            http: Some(HttpAttributes {
                host,
                method: req.method.as_str(),
                path: req.uri.path(),
                headers: &req.headers,
            }),
            ..Self::tcp(identity, source_ip, destination)
        }
    }

    /// A TCP connection: rules naming hosts, methods, paths or request headers do not match
    /// it in ALLOW and AUDIT policies, and have those fields ignored in DENY policies (Istio's
    /// treatment of HTTP-only fields on TCP traffic: fail closed).
    pub fn tcp(
        identity: impl Into<Option<&'a Identity>>,
        source_ip: IpAddr,
        destination: SocketAddr,
    ) -> Self {
        RequestAttributes {
            identity: identity.into(),
            principal: OnceCell::new(),
            source_ip: Some(source_ip),
            destination,
            http: None,
            auth: None,
        }
    }

    /// With the claims of the request's valid JWT.
    pub fn with_auth(mut self, claims: Option<&'a Claims>) -> Self {
        self.auth = claims;
        self
    }

    /// The principal as policies write it: without `spiffe://`; `` without identity.
    fn principal(&self) -> &str {
        match self.identity {
            None => "",
            Some(id) => self.principal.get_or_init(|| {
                format!(
                    "{}/ns/{}/sa/{}",
                    id.trust_domain(),
                    id.namespace(),
                    id.service_account()
                )
            }),
        }
    }

    fn namespace(&self) -> &str {
        self.identity.map_or("", |id| id.namespace())
    }
}

/// An address block (`10.0.0.0/8`, `fd00::/8`) or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Self, Problem> {
        let bad = || Problem::Cidr(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        let net = match net {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask32(len)).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask128(len)).into()),
        };
        Ok(Cidr { net, len })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.len) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// Positive and negative values of one field; unset when both are empty.
#[derive(Clone, Debug)]
struct Field<T> {
    any_of: Box<[T]>,
    none_of: Box<[T]>,
}

impl<T> Field<T> {
    fn compile(
        any_of: &[String],
        none_of: &[String],
        parse: impl Fn(&str) -> Result<T, Problem>,
    ) -> Result<Self, Problem> {
        Ok(Field {
            any_of: any_of.iter().map(|v| parse(v)).collect::<Result<_, _>>()?,
            none_of: none_of.iter().map(|v| parse(v)).collect::<Result<_, _>>()?,
        })
    }

    fn is_set(&self) -> bool {
        !self.any_of.is_empty() || !self.none_of.is_empty()
    }

    fn matches(&self, test: impl Fn(&T) -> bool) -> bool {
        (self.any_of.is_empty() || self.any_of.iter().any(&test)) && !self.none_of.iter().any(&test)
    }

    /// An HTTP-only field: on TCP, unjudgeable; it then passes in a DENY policy (the field
    /// is ignored) and fails otherwise.
    fn matches_http<'h>(
        &self,
        http: Option<&HttpAttributes<'h>>,
        deny: bool,
        test: impl Fn(&T, &HttpAttributes<'h>) -> bool,
    ) -> bool {
        match http {
            _ if !self.is_set() => true,
            None => deny,
            Some(h) => self.matches(|v| test(v, h)),
        }
    }
}

fn port(s: &str) -> Result<u16, Problem> {
    s.parse().map_err(|_| Problem::Port(s.to_string()))
}

fn host_matches(p: &Pattern, host: &str) -> bool {
    if p.matches_ignore_case(host) {
        return true;
    }
    // `reviews` also matches `reviews:9080` (a value with a port only matches with it).
    match host.rsplit_once(':') {
        Some((h, port))
            if !h.is_empty() && !h.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            p.matches_ignore_case(h)
        }
        _ => false,
    }
}

fn in_blocks(f: &Field<Cidr>, ip: Option<IpAddr>) -> bool {
    f.matches(|c| ip.is_some_and(|ip| c.contains(ip)))
}

#[derive(Clone, Debug)]
struct Source {
    principals: Field<Pattern>,
    namespaces: Field<Pattern>,
    ips: Field<Cidr>,
}

impl Source {
    fn compile(s: &pb::Source) -> Result<Self, Problem> {
        Ok(Source {
            principals: Field::compile(&s.principals, &s.not_principals, Pattern::parse)?,
            namespaces: Field::compile(&s.namespaces, &s.not_namespaces, Pattern::parse)?,
            ips: Field::compile(&s.ip_blocks, &s.not_ip_blocks, Cidr::parse)?,
        })
    }

    fn matches(&self, a: &RequestAttributes<'_>) -> bool {
        self.principals.matches(|p| p.matches(a.principal()))
            && self.namespaces.matches(|p| p.matches(a.namespace()))
            && in_blocks(&self.ips, a.source_ip)
    }
}

#[derive(Clone, Debug)]
struct Operation {
    hosts: Field<Pattern>,
    ports: Field<u16>,
    methods: Field<Pattern>,
    paths: Field<Pattern>,
}

impl Operation {
    fn compile(o: &pb::Operation) -> Result<Self, Problem> {
        Ok(Operation {
            hosts: Field::compile(&o.hosts, &o.not_hosts, Pattern::parse_ignore_case)?,
            ports: Field::compile(&o.ports, &o.not_ports, port)?,
            methods: Field::compile(&o.methods, &o.not_methods, Pattern::parse)?,
            paths: Field::compile(&o.paths, &o.not_paths, Pattern::parse)?,
        })
    }

    fn matches(&self, a: &RequestAttributes<'_>, deny: bool) -> bool {
        let http = a.http.as_ref();
        self.ports.matches(|p| *p == a.destination.port())
            && self
                .hosts
                .matches_http(http, deny, |p, h| host_matches(p, h.host))
            && self
                .methods
                .matches_http(http, deny, |p, h| p.matches(h.method))
            && self
                .paths
                .matches_http(http, deny, |p, h| p.matches(h.path))
    }
}

#[derive(Clone, Debug)]
enum Condition {
    Header(HeaderName, Field<Pattern>),
    SourceIp(Field<Cidr>),
    SourceNamespace(Field<Pattern>),
    SourcePrincipal(Field<Pattern>),
    DestinationIp(Field<Cidr>),
    DestinationPort(Field<u16>),
    Method(Field<Pattern>),
    Sni(Field<Pattern>),
    AuthPrincipal(Field<Pattern>),
    AuthAudiences(Field<Pattern>),
    AuthPresenter(Field<Pattern>),
    /// A claim's path (`[a][b]`) and its values.
    AuthClaim(Vec<String>, Field<Pattern>),
}

impl Condition {
    fn compile(c: &pb::Condition) -> Result<Self, Problem> {
        let (v, nv) = (&c.values[..], &c.not_values[..]);
        let patterns = || Field::compile(v, nv, Pattern::parse);
        let cidrs = || Field::compile(v, nv, Cidr::parse);
        Ok(match c.key.as_str() {
            "source.ip" | "remote.ip" => Condition::SourceIp(cidrs()?),
            "source.namespace" => Condition::SourceNamespace(patterns()?),
            "source.principal" => Condition::SourcePrincipal(patterns()?),
            "destination.ip" => Condition::DestinationIp(cidrs()?),
            "destination.port" => Condition::DestinationPort(Field::compile(v, nv, port)?),
            "request.method" => Condition::Method(patterns()?),
            "connection.sni" => Condition::Sni(patterns()?),
            "request.auth.principal" => Condition::AuthPrincipal(patterns()?),
            "request.auth.audiences" => Condition::AuthAudiences(patterns()?),
            "request.auth.presenter" => Condition::AuthPresenter(patterns()?),
            key if key.starts_with("request.auth.claims[") => {
                let path = claim_path(key).ok_or_else(|| Problem::ConditionKey(key.to_string()))?;
                Condition::AuthClaim(path, patterns()?)
            }
            key => {
                let name = key
                    .strip_prefix("request.headers[")
                    .and_then(|k| k.strip_suffix(']'))
                    .ok_or_else(|| Problem::ConditionKey(key.to_string()))?;
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| Problem::HeaderName(name.to_string()))?;
                Condition::Header(name, patterns()?)
            }
        })
    }

    fn matches(&self, a: &RequestAttributes<'_>, deny: bool) -> bool {
        let http = a.http.as_ref();
        match self {
            Condition::Header(name, f) => f.matches_http(http, deny, |p, h| {
                let mut values = h.headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    // Absent: matched as an empty value.
                    return p.matches("");
                }
                values.any(|v| v.to_str().is_ok_and(|v| p.matches(v)))
            }),
            Condition::SourceIp(f) => in_blocks(f, a.source_ip),
            Condition::SourceNamespace(f) => f.matches(|p| p.matches(a.namespace())),
            Condition::SourcePrincipal(f) => f.matches(|p| p.matches(a.principal())),
            Condition::DestinationIp(f) => in_blocks(f, Some(a.destination.ip())),
            Condition::DestinationPort(f) => f.matches(|p| *p == a.destination.port()),
            Condition::Method(f) => f.matches_http(http, deny, |p, h| p.matches(h.method)),
            Condition::Sni(f) => f.matches(|p| p.matches("")),
            Condition::AuthPrincipal(f) => auth_matches(a, f, deny, |c| vec![c.principal.clone()]),
            Condition::AuthAudiences(f) => auth_matches(a, f, deny, |c| c.audiences.clone()),
            Condition::AuthPresenter(f) => auth_matches(a, f, deny, |c| vec![c.presenter.clone()]),
            Condition::AuthClaim(path, f) => auth_matches(a, f, deny, |c| c.values(path)),
        }
    }
}

/// `request.auth.claims[a][b]` → `["a", "b"]`.
fn claim_path(key: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        if end == 0 {
            return None;
        }
        path.push(inner[..end].to_string());
        rest = &inner[end + 1..];
    }
    (!path.is_empty()).then_some(path)
}

/// A condition on the request's JWT: HTTP only (TCP: fails closed, as other HTTP-only
/// fields); without a valid token, matched as one empty value.
fn auth_matches(
    a: &RequestAttributes<'_>,
    f: &Field<Pattern>,
    deny: bool,
    values: impl Fn(&Claims) -> Vec<String>,
) -> bool {
    if !f.is_set() {
        return true;
    }
    if a.http.is_none() {
        return deny;
    }
    let values = a.auth.map(values).unwrap_or_default();
    f.matches(|p| {
        if values.is_empty() {
            p.matches("")
        } else {
            values.iter().any(|v| p.matches(v))
        }
    })
}

#[derive(Clone, Debug)]
enum Rule {
    Compiled {
        from: Box<[Source]>,
        to: Box<[Operation]>,
        when: Box<[Condition]>,
    },
    /// Could not be compiled: fails closed.
    Broken,
}

impl Rule {
    fn compile(r: &pb::Rule) -> Result<Self, Problem> {
        Ok(Rule::Compiled {
            from: r
                .from
                .iter()
                .map(Source::compile)
                .collect::<Result<_, _>>()?,
            to: r
                .to
                .iter()
                .map(Operation::compile)
                .collect::<Result<_, _>>()?,
            when: r
                .when
                .iter()
                .map(Condition::compile)
                .collect::<Result<_, _>>()?,
        })
    }

    /// `deny`: judged for a DENY policy, where whatever cannot be judged matches.
    fn matches(&self, a: &RequestAttributes<'_>, deny: bool) -> bool {
        match self {
            Rule::Compiled { from, to, when } => {
                (from.is_empty() || from.iter().any(|s| s.matches(a)))
                    && (to.is_empty() || to.iter().any(|o| o.matches(a, deny)))
                    && when.iter().all(|c| c.matches(a, deny))
            }
            Rule::Broken => deny,
        }
    }
}

#[derive(Clone, Debug)]
struct Policy {
    /// `namespace/name`.
    name: Arc<str>,
    match_all: bool,
    rules: Box<[Rule]>,
}

impl Policy {
    fn matches(&self, a: &RequestAttributes<'_>, deny: bool) -> bool {
        self.match_all || self.rules.iter().any(|r| r.matches(a, deny))
    }
}

/// The authorization policies of one scope (the waypoint's Gateway, or one Service), compiled
/// and sorted by action.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    deny: Box<[Policy]>,
    allow: Box<[Policy]>,
    audit: Box<[Policy]>,
}

impl Policies {
    /// Compiles policies; rules that cannot be compiled are reported and fail closed.
    pub fn compile(policies: &[pb::Policy]) -> (Self, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let (mut deny, mut allow, mut audit) = (Vec::new(), Vec::new(), Vec::new());
        for p in policies {
            let name: Arc<str> = format!("{}/{}", p.namespace, p.name).into();
            let rules = p
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    Rule::compile(r).unwrap_or_else(|problem| {
                        errors.push(ConfigError {
                            origin: format!("policy {name} rule #{i}"),
                            problem,
                        });
                        Rule::Broken
                    })
                })
                .collect();
            let policy = Policy {
                name,
                match_all: p.match_all,
                rules,
            };
            match pb::Action::try_from(p.action) {
                Ok(pb::Action::Allow) => allow.push(policy),
                Ok(pb::Action::Deny) => deny.push(policy),
                Ok(pb::Action::Audit) => audit.push(policy),
                // An action this waypoint does not know: enforce it as a DENY (fail closed).
                Err(_) => {
                    errors.push(ConfigError {
                        origin: format!("policy {}", policy.name),
                        problem: Problem::Unknown,
                    });
                    deny.push(policy);
                }
            }
        }
        let compiled = Policies {
            deny: deny.into(),
            allow: allow.into(),
            audit: audit.into(),
        };
        (compiled, errors)
    }

    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.audit.is_empty()
    }
}

/// The authorization result for a request; displays as `allowed by ns/name`,
/// `denied by ns/name`, `denied: no ALLOW policy matched` or `allowed: no ALLOW policy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict<'p> {
    pub allowed: bool,
    /// The deciding policy (`namespace/name`): the DENY that matched, or the ALLOW that
    /// matched; `None` when denied because no ALLOW matched, or allowed because none applies.
    pub policy: Option<&'p str>,
    /// AUDIT policies that matched (empty: the request is not audited).
    pub audited: Vec<&'p str>,
}

impl fmt::Display for Verdict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.allowed { "allowed" } else { "denied" };
        match (self.policy, self.allowed) {
            (Some(p), _) => write!(f, "{word} by {p}"),
            (None, false) => write!(f, "denied: no ALLOW policy matched"),
            (None, true) => write!(f, "allowed: no ALLOW policy"),
        }
    }
}

/// Authorizes a request against the Gateway's policies and the Service's together (pass
/// `Policies::default()` for a request to a workload).
pub fn evaluate<'p>(
    gateway: &'p Policies,
    service: &'p Policies,
    attrs: &RequestAttributes<'_>,
) -> Verdict<'p> {
    let scopes = || [gateway, service].into_iter();
    let audited = scopes()
        .flat_map(|s| s.audit.iter())
        .filter(|p| p.matches(attrs, false))
        .map(|p| &*p.name)
        .collect();
    if let Some(p) = scopes()
        .flat_map(|s| s.deny.iter())
        .find(|p| p.matches(attrs, true))
    {
        return Verdict {
            allowed: false,
            policy: Some(&p.name),
            audited,
        };
    }
    if scopes().all(|s| s.allow.is_empty()) {
        return Verdict {
            allowed: true,
            policy: None,
            audited,
        };
    }
    let allow = scopes()
        .flat_map(|s| s.allow.iter())
        .find(|p| p.matches(attrs, false));
    Verdict {
        allowed: allow.is_some(),
        policy: allow.map(|p| &*p.name),
        audited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// No policies, for the gateway's scope.
    static NONE: std::sync::LazyLock<Policies> = std::sync::LazyLock::new(Policies::default);

    const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn policy(name: &str, action: pb::Action, rules: Vec<pb::Rule>) -> pb::Policy {
        pb::Policy {
            namespace: "bookinfo".into(),
            name: name.into(),
            action: action as i32,
            rules,
            match_all: false,
        }
    }

    fn compile(policies: Vec<pb::Policy>) -> Policies {
        let (p, errors) = Policies::compile(&policies);
        assert!(errors.is_empty(), "{errors:?}");
        p
    }

    struct Req {
        identity: Option<Identity>,
        parts: http::request::Parts,
        source_ip: IpAddr,
        dst: SocketAddr,
    }

    fn req(principal: Option<&str>, method: &str, path: &str) -> Req {
        let (parts, ()) = http::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "reviews:9080")
            .body(())
            .unwrap()
            .into_parts();
        Req {
            identity: principal.map(|p| p.parse().unwrap()),
            parts,
            source_ip: "10.244.1.5".parse().unwrap(),
            dst: "10.96.0.10:9080".parse().unwrap(),
        }
    }

    impl Req {
        fn attrs(&self) -> RequestAttributes<'_> {
            RequestAttributes::http(
                self.identity.as_ref(),
                self.source_ip,
                self.dst,
                &self.parts,
            )
        }

        fn tcp(&self) -> RequestAttributes<'_> {
            RequestAttributes::tcp(self.identity.as_ref(), self.source_ip, self.dst)
        }

        fn allowed(&self, service: &Policies) -> bool {
            evaluate(&NONE, service, &self.attrs()).allowed
        }

        fn set_principal(&mut self, p: &str) {
            self.identity = Some(p.parse().unwrap());
        }
    }

    fn from_principals(p: &[&str]) -> pb::Source {
        pb::Source {
            principals: strings(p),
            ..Default::default()
        }
    }

    #[test]
    fn allow_get_from_productpage() {
        let p = compile(vec![policy(
            "get-from-productpage",
            pb::Action::Allow,
            vec![pb::Rule {
                from: vec![from_principals(&[
                    "cluster.local/ns/bookinfo/sa/bookinfo-productpage",
                ])],
                to: vec![pb::Operation {
                    methods: strings(&["GET"]),
                    ..Default::default()
                }],
                when: vec![],
            }],
        )]);
        let ok = req(Some(PRODUCTPAGE), "GET", "/reviews/1");
        let v = evaluate(&NONE, &p, &ok.attrs());
        assert!(v.allowed);
        assert_eq!(v.policy, Some("bookinfo/get-from-productpage"));
        assert!(!req(Some(PRODUCTPAGE), "POST", "/reviews/1").allowed(&p));
        assert!(
            !req(
                Some("spiffe://cluster.local/ns/bookinfo/sa/other"),
                "GET",
                "/"
            )
            .allowed(&p)
        );
        assert!(!req(None, "GET", "/").allowed(&p));
    }

    #[test]
    fn deny_by_path_wins_over_allow() {
        let p = compile(vec![
            policy(
                "deny-admin",
                pb::Action::Deny,
                vec![pb::Rule {
                    to: vec![pb::Operation {
                        paths: strings(&["/admin*", "*/secret"]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            ),
            pb::Policy {
                match_all: true,
                ..policy("allow-all", pb::Action::Allow, vec![])
            },
        ]);
        let cases = [
            ("/admin", false),
            ("/admin/users", false),
            ("/a/secret", false),
            ("/public", true),
            ("/secret/x", true),
        ];
        for (path, want) in cases {
            let r = req(Some(PRODUCTPAGE), "GET", path);
            let v = evaluate(&NONE, &p, &r.attrs());
            assert_eq!(v.allowed, want, "{path}");
            let expected = if want {
                "bookinfo/allow-all"
            } else {
                "bookinfo/deny-admin"
            };
            assert_eq!(v.policy, Some(expected));
        }
    }

    #[test]
    fn not_methods_and_not_principals() {
        // DENY everything that is not a GET or HEAD, except from productpage.
        let p = compile(vec![policy(
            "read-only",
            pb::Action::Deny,
            vec![pb::Rule {
                from: vec![pb::Source {
                    not_principals: strings(&["*/sa/bookinfo-productpage"]),
                    ..Default::default()
                }],
                to: vec![pb::Operation {
                    not_methods: strings(&["GET", "HEAD"]),
                    ..Default::default()
                }],
                when: vec![],
            }],
        )]);
        let other = Some("spiffe://cluster.local/ns/bookinfo/sa/ratings");
        let table = [
            (other, "GET", true),
            (other, "HEAD", true),
            (other, "POST", false),
            (other, "DELETE", false),
            (Some(PRODUCTPAGE), "POST", true),
            // No identity: not_principals passes, so the DENY applies.
            (None, "POST", false),
        ];
        for (principal, method, want) in table {
            assert_eq!(
                req(principal, method, "/").allowed(&p),
                want,
                "{principal:?} {method}"
            );
        }
    }

    #[test]
    fn when_conditions_are_all_required() {
        let p = compile(vec![policy(
            "header-and-ns",
            pb::Action::Allow,
            vec![pb::Rule {
                when: vec![
                    pb::Condition {
                        key: "request.headers[X-Token]".into(),
                        values: strings(&["admin-*"]),
                        not_values: vec![],
                    },
                    pb::Condition {
                        key: "source.namespace".into(),
                        values: strings(&["bookinfo"]),
                        not_values: vec![],
                    },
                    pb::Condition {
                        key: "destination.port".into(),
                        values: strings(&["9080"]),
                        not_values: vec![],
                    },
                ],
                ..Default::default()
            }],
        )]);
        let mut r = req(Some(PRODUCTPAGE), "GET", "/");
        assert!(!r.allowed(&p), "no header");
        r.parts
            .headers
            .insert("x-token", HeaderValue::from_static("admin-1"));
        assert!(r.allowed(&p));
        r.parts
            .headers
            .insert("x-token", HeaderValue::from_static("user-1"));
        assert!(!r.allowed(&p));
        // Any value of a repeated header.
        r.parts
            .headers
            .append("x-token", HeaderValue::from_static("admin-2"));
        assert!(r.allowed(&p));
        r.set_principal("spiffe://cluster.local/ns/other/sa/x");
        assert!(!r.allowed(&p), "namespace");
        r.set_principal(PRODUCTPAGE);
        r.dst.set_port(8080);
        assert!(!r.allowed(&p), "port");
    }

    #[test]
    fn sources_ored_fields_anded_ip_blocks() {
        let p = compile(vec![policy(
            "sources",
            pb::Action::Allow,
            vec![pb::Rule {
                from: vec![
                    pb::Source {
                        namespaces: strings(&["bookinfo"]),
                        ip_blocks: strings(&["10.244.1.0/24"]),
                        not_ip_blocks: strings(&["10.244.1.66"]),
                        ..Default::default()
                    },
                    from_principals(&["cluster.local/ns/admin/sa/*"]),
                ],
                ..Default::default()
            }],
        )]);
        let mut r = req(Some(PRODUCTPAGE), "GET", "/");
        assert!(r.allowed(&p));
        r.source_ip = "10.244.2.5".parse().unwrap();
        assert!(!r.allowed(&p), "outside block");
        r.source_ip = "::ffff:10.244.1.9".parse().unwrap();
        assert!(r.allowed(&p), "IPv4-mapped");
        r.source_ip = "10.244.1.66".parse().unwrap();
        assert!(!r.allowed(&p), "excluded address");
        r.set_principal("spiffe://cluster.local/ns/admin/sa/ops");
        assert!(r.allowed(&p), "second source");
    }

    #[test]
    fn hosts_ignore_case_and_port() {
        let p = compile(vec![policy(
            "hosts",
            pb::Action::Allow,
            vec![pb::Rule {
                to: vec![pb::Operation {
                    hosts: strings(&["Reviews", "*.example.com:8443"]),
                    ports: strings(&["9080", "8443"]),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        )]);
        let mut r = req(Some(PRODUCTPAGE), "GET", "/");
        for (host, port, want) in [
            ("reviews:9080", 9080, true),
            ("REVIEWS", 9080, true),
            ("reviews:9080", 9081, false),
            ("reviewsx", 9080, false),
            ("api.example.com:8443", 8443, true),
            ("api.example.com", 8443, false),
        ] {
            r.parts.headers.insert(HOST, HeaderValue::from_static(host));
            r.dst.set_port(port);
            assert_eq!(r.allowed(&p), want, "{host} {port}");
        }
    }

    #[test]
    fn empty_rules_match_all_and_allow_nothing() {
        // ALLOW with no rules: nothing matches, and its existence denies everything.
        let allow_nothing = compile(vec![policy("allow-nothing", pb::Action::Allow, vec![])]);
        let r = req(Some(PRODUCTPAGE), "GET", "/");
        let v = evaluate(&NONE, &allow_nothing, &r.attrs());
        assert_eq!((v.allowed, v.policy), (false, None));
        // DENY with no rules matches nothing.
        let deny_nothing = compile(vec![policy("deny-nothing", pb::Action::Deny, vec![])]);
        assert!(r.allowed(&deny_nothing));
        // An empty rule matches everything.
        let deny_all = compile(vec![policy(
            "deny-all",
            pb::Action::Deny,
            vec![pb::Rule::default()],
        )]);
        assert!(!r.allowed(&deny_all));
        // No policies: allowed.
        assert!(r.allowed(&Policies::default()));
    }

    #[test]
    fn gateway_and_service_policies_combine_and_audit_is_reported() {
        let gateway = compile(vec![policy(
            "gw-deny-delete",
            pb::Action::Deny,
            vec![pb::Rule {
                to: vec![pb::Operation {
                    methods: strings(&["DELETE"]),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        )]);
        let service = compile(vec![
            policy(
                "audit-posts",
                pb::Action::Audit,
                vec![pb::Rule {
                    to: vec![pb::Operation {
                        methods: strings(&["POST", "DELETE"]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            ),
            policy(
                "allow-bookinfo",
                pb::Action::Allow,
                vec![pb::Rule {
                    from: vec![pb::Source {
                        namespaces: strings(&["bookinfo"]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            ),
        ]);
        let post = req(Some(PRODUCTPAGE), "POST", "/");
        let v = evaluate(&gateway, &service, &post.attrs());
        assert!(v.allowed);
        assert_eq!(v.audited, ["bookinfo/audit-posts"]);
        let delete = req(Some(PRODUCTPAGE), "DELETE", "/");
        let v = evaluate(&gateway, &service, &delete.attrs());
        assert_eq!(
            (v.allowed, v.policy),
            (false, Some("bookinfo/gw-deny-delete"))
        );
        assert_eq!(v.audited, ["bookinfo/audit-posts"]);
        let get = req(Some(PRODUCTPAGE), "GET", "/");
        assert!(
            evaluate(&gateway, &service, &get.attrs())
                .audited
                .is_empty()
        );
    }

    #[test]
    fn broken_rules_fail_closed() {
        let rule = |key: &str| pb::Rule {
            when: vec![pb::Condition {
                key: key.into(),
                values: strings(&["x"]),
                not_values: vec![],
            }],
            ..Default::default()
        };
        let bad_cidr = pb::Rule {
            from: vec![pb::Source {
                ip_blocks: strings(&["10.0.0.0/33"]),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (allow, errors) = Policies::compile(&[policy(
            "allow-jwt",
            pb::Action::Allow,
            vec![rule("request.auth.claims[]"), bad_cidr.clone()],
        )]);
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].origin, "policy bookinfo/allow-jwt rule #0");
        assert_eq!(
            errors[0].problem,
            Problem::ConditionKey("request.auth.claims[]".into())
        );
        let r = req(Some(PRODUCTPAGE), "GET", "/");
        assert!(!r.allowed(&allow), "a broken ALLOW rule matches nothing");
        let (deny, errors) = Policies::compile(&[policy(
            "deny-jwt",
            pb::Action::Deny,
            vec![rule("request.auth.unknown")],
        )]);
        assert_eq!(errors.len(), 1);
        assert!(!r.allowed(&deny), "a broken DENY rule matches everything");
        let (_, errors) = Policies::compile(&[policy(
            "template",
            pb::Action::Allow,
            vec![pb::Rule {
                to: vec![pb::Operation {
                    paths: strings(&["/api/{*}/x"]),
                    ports: strings(&["http"]),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        )]);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn attributes_from_request() {
        let r = req(Some(PRODUCTPAGE), "PUT", "/a/b?c=d");
        let a = r.attrs();
        let h = a.http.unwrap();
        assert_eq!((h.method, h.path, h.host), ("PUT", "/a/b", "reviews:9080"));
        assert_eq!(
            a.principal(),
            "cluster.local/ns/bookinfo/sa/bookinfo-productpage"
        );
        assert_eq!(a.namespace(), "bookinfo");
        assert_eq!(a.destination.port(), 9080);
        let anonymous = req(None, "GET", "/");
        assert_eq!(
            (anonymous.attrs().principal(), anonymous.attrs().namespace()),
            ("", "")
        );
    }

    #[test]
    fn tcp_fails_closed_on_http_only_fields() {
        let get_only = pb::Rule {
            to: vec![pb::Operation {
                methods: strings(&["GET"]),
                ..Default::default()
            }],
            ..Default::default()
        };
        let port_only = pb::Rule {
            to: vec![pb::Operation {
                ports: strings(&["9080"]),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = req(Some(PRODUCTPAGE), "GET", "/");
        let verdict = |policies: &Policies| evaluate(&NONE, policies, &r.tcp()).allowed;
        // ALLOW on a method cannot match a TCP connection.
        let allow = compile(vec![policy(
            "allow-get",
            pb::Action::Allow,
            vec![get_only.clone()],
        )]);
        assert!(r.allowed(&allow) && !verdict(&allow));
        // ALLOW on ports only still works.
        let allow = compile(vec![policy(
            "allow-port",
            pb::Action::Allow,
            vec![port_only],
        )]);
        assert!(verdict(&allow));
        // DENY on a method: the method is ignored, so the TCP connection is denied.
        let deny = compile(vec![policy("deny-get", pb::Action::Deny, vec![get_only])]);
        let post = req(Some(PRODUCTPAGE), "POST", "/");
        assert!(post.allowed(&deny) && !verdict(&deny));
        let header = compile(vec![policy(
            "deny-header",
            pb::Action::Deny,
            vec![pb::Rule {
                when: vec![pb::Condition {
                    key: "request.headers[x-a]".into(),
                    values: strings(&["1"]),
                    not_values: vec![],
                }],
                ..Default::default()
            }],
        )]);
        assert!(r.allowed(&header) && !verdict(&header));
    }

    #[test]
    fn cidr_parsing() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let one = Cidr::parse("fd00::1").unwrap();
        assert!(
            one.contains("fd00::1".parse().unwrap()) && !one.contains("fd00::2".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(
            !Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/x").is_err() && Cidr::parse("bad").is_err());
    }
}
