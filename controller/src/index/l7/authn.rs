//! `RequestAuthentication` with `targetRefs` → [`l7::JwtRule`]s on the waypoint Gateways and
//! Services (or ServiceEntry hosts) they name (see [`super::targets`]). One without
//! `targetRefs` is for sidecars and gateways, which this mesh does not run: reported.

use std::collections::BTreeMap;

use ambient_proto::ambient::waypoint::v1 as l7;

use super::targets::{self, Target};
use super::{Out, ServiceKey, duration_field};
use crate::index::Context;
use crate::model::istio::{JwtRule, RequestAuthentication};

/// Attaches every RequestAuthentication's rules to its targets; returns the Services' rules.
pub fn attach(
    ctx: &Context<'_>,
    out: &mut Out,
    gateways: &mut BTreeMap<ServiceKey, l7::GatewayConfig>,
) -> BTreeMap<ServiceKey, Vec<l7::JwtRule>> {
    let mut services: BTreeMap<ServiceKey, Vec<l7::JwtRule>> = BTreeMap::new();
    let mut all: Vec<&RequestAuthentication> = ctx.state.request_authentications().collect();
    // A stable order, whatever order the objects arrived in.
    all.sort_by_key(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()));
    for ra in all {
        let ns = ra
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = ra.metadata.name.clone().unwrap_or_default();
        let object = format!("RequestAuthentication/{ns}/{name}");
        let refs: Vec<_> = ra
            .spec
            .target_ref
            .iter()
            .chain(&ra.spec.target_refs)
            .collect();
        if refs.is_empty() {
            out.warn(
                &object,
                "has no targetRefs: it would apply to sidecars, which this mesh does not run; name a waypoint Gateway, Service or ServiceEntry",
            );
            continue;
        }
        let rules: Vec<l7::JwtRule> = ra
            .spec
            .jwt_rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| convert(out, &object, &format!("{ns}/{name}"), i, r))
            .collect();
        for target in targets::resolve(ctx, out, &object, &ns, &refs, gateways) {
            match target {
                Target::Service(key) => services
                    .entry(key)
                    .or_default()
                    .extend(rules.iter().cloned()),
                Target::Gateway(key) => {
                    if let Some(g) = gateways.get_mut(&key) {
                        g.jwt_rules.extend(rules.iter().cloned());
                    }
                }
            }
        }
    }
    services
}

/// One rule; `None` (reported) without an issuer.
fn convert(
    out: &mut Out,
    object: &str,
    source: &str,
    i: usize,
    r: &JwtRule,
) -> Option<l7::JwtRule> {
    let field = format!("jwtRules[{i}]");
    if r.issuer.is_empty() {
        out.warn(object, format!("{field} has no issuer; ignored"));
        return None;
    }
    let jwks = r.jwks.clone().unwrap_or_default();
    let mut jwks_uri = r.jwks_uri.clone().unwrap_or_default();
    if !jwks.is_empty() && !jwks_uri.is_empty() {
        out.warn(
            object,
            format!("{field}: jwks and jwksUri both set; the inline jwks is used"),
        );
        jwks_uri.clear();
    }
    if jwks.is_empty() && jwks_uri.is_empty() {
        out.warn(
            object,
            format!("{field}: neither jwks nor jwksUri (OpenID discovery is not supported); its tokens are refused"),
        );
    }
    let web = jwks_uri.starts_with("http://") || jwks_uri.starts_with("https://");
    if !jwks_uri.is_empty() && !web {
        out.warn(
            object,
            format!("{field}: jwksUri {jwks_uri:?} is not an http:// or https:// URL; its tokens are refused"),
        );
    }
    if !jwks.is_empty() && serde_json::from_str::<serde_json::Value>(&jwks).is_err() {
        out.warn(
            object,
            format!("{field}: jwks is not JSON; its tokens are refused"),
        );
    }
    Some(l7::JwtRule {
        source: source.to_string(),
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        jwks_uri,
        jwks,
        from_headers: r
            .from_headers
            .iter()
            .map(|h| l7::JwtHeader {
                name: h.name.clone(),
                prefix: h.prefix.clone().unwrap_or_default(),
            })
            .collect(),
        from_params: r.from_params.clone(),
        from_cookies: r.from_cookies.clone(),
        forward_original_token: r.forward_original_token.unwrap_or(false),
        output_claim_to_headers: r
            .output_claim_to_headers
            .iter()
            .map(|c| l7::ClaimToHeader {
                header: c.header.clone(),
                claim: c.claim.clone(),
            })
            .collect(),
        output_payload_to_header: r.output_payload_to_header.clone().unwrap_or_default(),
        jwks_timeout_ms: duration_field(
            out,
            object,
            &format!("{field}.timeout"),
            r.timeout.as_deref(),
        ),
    })
}
