//! Stage 0: end-user authentication (RequestAuthentication), against the Gateway's rules and
//! the addressed service's.
//!
//! A request without a token passes with no claims: authorization decides about it. A token
//! is judged by the rule of its issuer that looks where it was found; anything wrong with it
//! (or no keys to check it with) answers 401. A valid token's claims go to authorization;
//! then the token is removed from its header unless `forwardOriginalToken`, and claims are
//! copied to headers as `outputClaimToHeaders` asks.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use tracing::debug;

use super::{Exchange, Local};
use crate::l7::jwt::{self, JwtError, JwtRule, Keys, Location, Token};

/// Checks the request's token, if it has one; its claims are kept in `x.auth`.
pub async fn check<B>(x: &mut Exchange<'_, B>) -> Result<(), Local> {
    let service_rules: &[Arc<JwtRule>] = x.service.map_or(&[], |s| &s.jwt_rules);
    let gateway_rules = &x.routing.gateway_jwt_rules;
    if service_rules.is_empty() && gateway_rules.is_empty() {
        return Ok(());
    }
    let rules = || gateway_rules.iter().chain(service_rules).map(|r| &**r);
    let Some((token, location)) = jwt::find_token(&x.parts, rules()) else {
        return Ok(());
    };
    let rule = match validate(&token, &location, rules()).await {
        Ok((rule, claims)) => {
            x.auth = Some(claims);
            rule
        }
        Err(e) => {
            debug!(src = %x.downstream.identity, reason = e.message(), "request refused: invalid JWT");
            return Err(Local::unauthenticated(e));
        }
    };
    if !rule.forward_original_token
        && let Location::Header { name, .. } = &location
    {
        x.parts.headers.remove(name);
    }
    let claims = x.auth.as_ref().expect("set above");
    for (header, path) in &rule.claim_headers {
        let values = claims.values(path);
        if !values.is_empty()
            && let Ok(v) = HeaderValue::try_from(values.join(","))
        {
            x.parts.headers.insert(header.clone(), v);
        }
    }
    if let Some(header) = &rule.payload_header
        && let Some(payload) = token.split('.').nth(1)
        && let Ok(v) = HeaderValue::try_from(payload)
    {
        x.parts.headers.insert(header.clone(), v);
    }
    Ok(())
}

/// The rule that accepts `token` found at `location`, and the token's claims.
async fn validate<'a>(
    token: &str,
    location: &Location,
    mut rules: impl Iterator<Item = &'a JwtRule>,
) -> Result<(&'a JwtRule, jwt::Claims), JwtError> {
    let parsed = Token::parse(token)?;
    let rule = rules
        .find(|r| r.issuer == parsed.issuer() && r.locations.contains(location))
        .ok_or(JwtError::UnknownIssuer)?;
    let keys = match &rule.keys {
        Keys::Inline(Ok(keys)) => keys.clone(),
        Keys::Inline(Err(_)) => return Err(JwtError::NoKeys),
        Keys::Remote(remote) => remote
            .keys_for(parsed.kid.as_deref())
            .await
            .ok_or(JwtError::NoKeys)?,
    };
    let claims = parsed.verify(&keys, &rule.audiences, SystemTime::now())?;
    Ok((rule, claims))
}

#[cfg(test)]
mod tests {
    use ambient_proto::ambient::waypoint::v1 as pb;
    use serde_json::json;

    use super::*;
    use crate::l7::jwt_testing::{Issuer, epoch, jwks};
    use crate::pipeline::authorize;
    use crate::pipeline::testing::{Fixture, Request, get};

    const ISS: &str = "https://login.example.test";

    fn rule(issuer: &Issuer) -> pb::JwtRule {
        pb::JwtRule {
            source: "shop/jwt".into(),
            issuer: ISS.into(),
            audiences: vec!["shop".into()],
            jwks: jwks(&[issuer]),
            ..Default::default()
        }
    }

    fn token(issuer: &Issuer, iss: &str, exp: i64) -> String {
        issuer.token(
            &json!({"iss": iss, "sub": "alice", "aud": "shop", "exp": epoch(exp),
                             "groups": ["admin"]}),
        )
    }

    fn bearer(path: &str, token: &str) -> Request {
        let mut r = get(path);
        r.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        r
    }

    /// Authentication then authorization, as the pipeline runs them; the request as sent on.
    async fn judge(f: &Fixture, req: Request) -> Result<http::request::Parts, Local> {
        let mut x = f.exchange(req);
        check(&mut x).await?;
        authorize::check(&x)?;
        Ok(x.parts)
    }

    #[tokio::test]
    async fn invalid_tokens_get_401_and_requests_without_one_pass() {
        let issuer = Issuer::ec("k1");
        let mut f = Fixture::new();
        f.service_jwt_rules(&[rule(&issuer)]);
        assert!(
            judge(&f, get("/")).await.is_ok(),
            "no token: authorization decides"
        );
        assert!(
            judge(&f, bearer("/", &token(&issuer, ISS, 600)))
                .await
                .is_ok()
        );
        for (bad, why) in [
            (token(&issuer, ISS, -600), "Jwt is expired"),
            (
                token(&issuer, "https://other.test", 600),
                "Jwt issuer is not configured",
            ),
            (token(&Issuer::ec("k1"), ISS, 600), "Jwt verification fails"),
            (
                "garbage".to_string(),
                "Jwt is not in the form of Header.Payload.Signature",
            ),
        ] {
            let refused = judge(&f, bearer("/", &bad)).await.unwrap_err();
            assert_eq!((refused.status.as_u16(), refused.body), (401, why));
        }
    }

    #[tokio::test]
    async fn claims_reach_authorization() {
        let issuer = Issuer::rsa(
            "r1",
            include_bytes!("../../../tests/fixtures/jwt/rsa-1.pem"),
        );
        let mut f = Fixture::new();
        f.service_jwt_rules(&[rule(&issuer)]);
        // Istio's "require a JWT": ALLOW with requestPrincipals ["*"], and a claim condition.
        let allow = |key: &str, values: &[&str]| pb::Policy {
            namespace: "shop".into(),
            name: "jwt".into(),
            action: pb::Action::Allow as i32,
            rules: vec![pb::Rule {
                when: vec![pb::Condition {
                    key: key.into(),
                    values: values.iter().map(|v| v.to_string()).collect(),
                    not_values: vec![],
                }],
                ..Default::default()
            }],
            match_all: false,
        };
        f.service_policies(&[allow("request.auth.principal", &["*"])]);
        assert_eq!(judge(&f, get("/")).await.unwrap_err(), Local::DENIED);
        let valid = token(&issuer, ISS, 600);
        assert!(judge(&f, bearer("/", &valid)).await.is_ok());
        f.service_policies(&[allow("request.auth.principal", &[&format!("{ISS}/alice")])]);
        assert!(judge(&f, bearer("/", &valid)).await.is_ok());
        f.service_policies(&[allow("request.auth.claims[groups]", &["admin"])]);
        assert!(judge(&f, bearer("/", &valid)).await.is_ok());
        f.service_policies(&[allow("request.auth.claims[groups]", &["ops"])]);
        assert_eq!(
            judge(&f, bearer("/", &valid)).await.unwrap_err(),
            Local::DENIED
        );
    }

    #[tokio::test]
    async fn the_token_is_removed_unless_forwarded_and_claims_become_headers() {
        let issuer = Issuer::ec("k1");
        let mut f = Fixture::new();
        let with_headers = pb::JwtRule {
            output_claim_to_headers: vec![pb::ClaimToHeader {
                header: "x-user".into(),
                claim: "sub".into(),
            }],
            ..rule(&issuer)
        };
        f.service_jwt_rules(std::slice::from_ref(&with_headers));
        let valid = token(&issuer, ISS, 600);
        let sent = judge(&f, bearer("/", &valid)).await.unwrap();
        assert!(sent.headers.get(http::header::AUTHORIZATION).is_none());
        assert_eq!(sent.headers["x-user"], "alice");
        f.service_jwt_rules(&[pb::JwtRule {
            forward_original_token: true,
            ..with_headers
        }]);
        let sent = judge(&f, bearer("/", &valid)).await.unwrap();
        assert_eq!(
            sent.headers[http::header::AUTHORIZATION],
            format!("Bearer {valid}")
        );
    }
}
