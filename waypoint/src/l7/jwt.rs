//! JSON Web Tokens, as a RequestAuthentication asks the waypoint to check them: where a
//! request carries its token, the keys (JWKS) that may have signed it, and what a valid
//! token says about its bearer ([`Claims`]).
//!
//! Istio's semantics: a request without a token passes (authorization decides about it); a
//! request with a token that fails any check is refused (401). Signatures: RS256/384/512,
//! PS256/384/512 and ES256/384, verified with ring. `exp` and `nbf` are checked with 60 s of
//! clock skew (Envoy's default).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambient_proto::ambient::waypoint::v1 as pb;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderName;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::Value;

use super::jwks::RemoteJwks;

/// Tolerated difference between our clock and the issuer's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A public key of a JWKS.
#[derive(Debug)]
struct Jwk {
    kid: Option<String>,
    key: PublicKey,
}

#[derive(Debug)]
enum PublicKey {
    /// Modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An uncompressed point (`04 || x || y`) on P-256 or P-384.
    Ec { p384: bool, point: Vec<u8> },
}

/// The keys of one JWKS.
#[derive(Debug)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`); keys of other types, or for encryption,
    /// are skipped. At least one usable key is required.
    pub fn parse(json: &str) -> Result<Jwks, String> {
        let doc: Value =
            serde_json::from_str(json).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("JWKS has no \"keys\" array")?;
        let mut keys = Vec::new();
        for k in list {
            if k.get("use").and_then(Value::as_str) == Some("enc") {
                continue;
            }
            let field = |name: &str| -> Option<Vec<u8>> {
                URL_SAFE_NO_PAD
                    .decode(k.get(name)?.as_str()?.trim_end_matches('='))
                    .ok()
            };
            let key = match (
                k.get("kty").and_then(Value::as_str),
                k.get("crv").and_then(Value::as_str),
            ) {
                (Some("RSA"), _) => match (field("n"), field("e")) {
                    (Some(n), Some(e)) => PublicKey::Rsa { n, e },
                    _ => continue,
                },
                (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => match (field("x"), field("y")) {
                    (Some(x), Some(y)) => {
                        let mut point = vec![4u8];
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        PublicKey::Ec {
                            p384: crv == "P-384",
                            point,
                        }
                    }
                    _ => continue,
                },
                _ => continue,
            };
            keys.push(Jwk {
                kid: k.get("kid").and_then(Value::as_str).map(str::to_string),
                key,
            });
        }
        if keys.is_empty() {
            return Err("JWKS has no usable key (RSA, or EC on P-256/P-384)".into());
        }
        Ok(Jwks { keys })
    }

    /// Whether a key has this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Why a token is refused; the text is the 401's body, as Envoy words them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    #[error("Jwt header or payload is not valid JSON")]
    BadJson,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwt verification fails")]
    BadSignature,
    #[error("Jwt algorithm is not supported")]
    UnsupportedAlgorithm,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Audiences in Jwt are not allowed")]
    Audience,
    #[error("Jwks remote fetch is failed")]
    NoKeys,
}

impl JwtError {
    /// The text of the 401.
    pub fn message(&self) -> &'static str {
        match self {
            JwtError::Malformed => "Jwt is not in the form of Header.Payload.Signature",
            JwtError::BadJson => "Jwt header or payload is not valid JSON",
            JwtError::UnknownIssuer => "Jwt issuer is not configured",
            JwtError::BadSignature => "Jwt verification fails",
            JwtError::UnsupportedAlgorithm => "Jwt algorithm is not supported",
            JwtError::Expired => "Jwt is expired",
            JwtError::NotYetValid => "Jwt not yet valid",
            JwtError::Audience => "Audiences in Jwt are not allowed",
            JwtError::NoKeys => "Jwks remote fetch is failed",
        }
    }
}

/// What a valid token says about its bearer, for authorization.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claims {
    /// `iss/sub` (`request.auth.principal`).
    pub principal: String,
    /// `aud` (`request.auth.audiences`).
    pub audiences: Vec<String>,
    /// `azp` (`request.auth.presenter`).
    pub presenter: String,
    /// The whole payload (`request.auth.claims[...]`).
    pub payload: serde_json::Map<String, Value>,
}

impl Claims {
    /// The values of the claim at `path` (nested objects by successive names), as strings: a
    /// string claim is one value, a list of strings several; numbers and booleans as written.
    pub fn values(&self, path: &[String]) -> Vec<String> {
        let Some((first, rest)) = path.split_first() else {
            return Vec::new();
        };
        let mut at = self.payload.get(first);
        for name in rest {
            at = at.and_then(|v| v.get(name));
        }
        match at {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => list.iter().filter_map(scalar).collect(),
            Some(v) => scalar(v).into_iter().collect(),
            None => Vec::new(),
        }
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub struct Token<'t> {
    alg: String,
    pub kid: Option<String>,
    payload: serde_json::Map<String, Value>,
    /// `header.payload`, what the signature covers.
    signed: &'t [u8],
    signature: Vec<u8>,
    /// The payload as sent (base64url), for `outputPayloadToHeader`.
    pub payload_b64: &'t str,
}

impl<'t> Token<'t> {
    pub fn parse(text: &'t str) -> Result<Token<'t>, JwtError> {
        let mut parts = text.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed)
        };
        let header: Value = serde_json::from_slice(&decode(h)?).map_err(|_| JwtError::BadJson)?;
        let payload = match serde_json::from_slice(&decode(p)?) {
            Ok(Value::Object(m)) => m,
            _ => return Err(JwtError::BadJson),
        };
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::BadJson)?
            .to_string();
        Ok(Token {
            alg,
            kid: header
                .get("kid")
                .and_then(Value::as_str)
                .map(str::to_string),
            payload,
            signed: &text.as_bytes()[..h.len() + 1 + p.len()],
            signature: decode(s)?,
            payload_b64: p,
        })
    }

    /// The signature, decoded.
    pub fn signature_bytes(&self) -> &[u8] {
        &self.signature
    }

    /// `iss`, empty when absent.
    pub fn issuer(&self) -> &str {
        self.payload
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Verifies the signature with `keys` (the key named by `kid`, else each key that fits
    /// the algorithm), then the times and the audience; the claims when all hold.
    pub fn verify(
        self,
        keys: &Jwks,
        audiences: &[String],
        now: SystemTime,
    ) -> Result<Claims, JwtError> {
        let candidates = keys
            .keys
            .iter()
            .filter(|k| self.kid.is_none() || k.kid == self.kid);
        let mut verified = false;
        for k in candidates {
            match check_signature(&self.alg, &k.key, self.signed, &self.signature) {
                Ok(true) => {
                    verified = true;
                    break;
                }
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
        if !verified {
            return Err(JwtError::BadSignature);
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let skew = CLOCK_SKEW.as_secs_f64();
        let time = |name: &str| self.payload.get(name).and_then(Value::as_f64);
        if time("exp").is_some_and(|exp| now >= exp + skew) {
            return Err(JwtError::Expired);
        }
        if time("nbf").is_some_and(|nbf| now + skew < nbf) {
            return Err(JwtError::NotYetValid);
        }
        let aud: Vec<String> = match self.payload.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if !audiences.is_empty() && !aud.iter().any(|a| audiences.contains(a)) {
            return Err(JwtError::Audience);
        }
        let text = |name: &str| {
            self.payload
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Ok(Claims {
            principal: format!("{}/{}", text("iss"), text("sub")),
            audiences: aud,
            presenter: text("azp"),
            payload: self.payload,
        })
    }
}

/// `Ok(true)` when `key` signed `signed` with `alg`; `Ok(false)` when it did not (or does
/// not fit the algorithm); `Err` for an algorithm not supported at all.
fn check_signature(
    alg: &str,
    key: &PublicKey,
    signed: &[u8],
    sig: &[u8],
) -> Result<bool, JwtError> {
    let rsa: Option<&'static signature::RsaParameters> = match alg {
        "RS256" => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => Some(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => Some(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => Some(&signature::RSA_PSS_2048_8192_SHA512),
        _ => None,
    };
    if let Some(params) = rsa {
        let PublicKey::Rsa { n, e } = key else {
            return Ok(false);
        };
        let components = signature::RsaPublicKeyComponents { n, e };
        return Ok(components.verify(params, signed, sig).is_ok());
    }
    let (p384, alg) = match alg {
        "ES256" => (false, &signature::ECDSA_P256_SHA256_FIXED),
        "ES384" => (true, &signature::ECDSA_P384_SHA384_FIXED),
        _ => return Err(JwtError::UnsupportedAlgorithm),
    };
    match key {
        PublicKey::Ec { p384: on, point } if *on == p384 => Ok(UnparsedPublicKey::new(alg, point)
            .verify(signed, sig)
            .is_ok()),
        _ => Ok(false),
    }
}

/// Where a rule looks for a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A header, with the prefix before the token (`Bearer `).
    Header {
        name: HeaderName,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

/// Where the keys of a rule come from.
#[derive(Debug)]
pub enum Keys {
    Inline(Result<Arc<Jwks>, String>),
    Remote(Arc<RemoteJwks>),
}

/// One compiled `jwtRules` entry.
#[derive(Debug)]
pub struct JwtRule {
    /// `namespace/name` of the RequestAuthentication.
    pub source: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: Keys,
    pub locations: Vec<Location>,
    pub forward_original_token: bool,
    /// Header to set, and the claim's path.
    pub claim_headers: Vec<(HeaderName, Vec<String>)>,
    pub payload_header: Option<HeaderName>,
}

/// `Authorization: Bearer <token>`, then `?access_token=`: where tokens are when a rule says
/// nothing.
fn default_locations() -> Vec<Location> {
    vec![
        Location::Header {
            name: http::header::AUTHORIZATION,
            prefix: "Bearer ".into(),
        },
        Location::Param("access_token".into()),
    ]
}

impl JwtRule {
    /// Compiles a rule; remote keys come from `remote` (one fetcher per URI). Problems with
    /// the rule's own fields (a bad header name) are returned, and the rule is left out.
    pub fn compile(
        rule: &pb::JwtRule,
        remote: &mut dyn FnMut(&str, Duration) -> Arc<RemoteJwks>,
    ) -> Result<JwtRule, String> {
        let header = |name: &str| {
            HeaderName::try_from(name).map_err(|_| format!("{name:?} is not a header name"))
        };
        let mut locations = Vec::new();
        for h in &rule.from_headers {
            locations.push(Location::Header {
                name: header(&h.name)?,
                prefix: h.prefix.clone(),
            });
        }
        locations.extend(rule.from_params.iter().cloned().map(Location::Param));
        locations.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
        if locations.is_empty() {
            locations = default_locations();
        }
        let keys = if !rule.jwks.is_empty() {
            Keys::Inline(Jwks::parse(&rule.jwks).map(Arc::new))
        } else if !rule.jwks_uri.is_empty() {
            let timeout = match rule.jwks_timeout_ms {
                0 => Duration::from_secs(5),
                ms => Duration::from_millis(ms),
            };
            Keys::Remote(remote(&rule.jwks_uri, timeout))
        } else {
            Keys::Inline(Err("no jwks or jwksUri".into()))
        };
        let claim_headers = rule
            .output_claim_to_headers
            .iter()
            .map(|c| {
                Ok((
                    header(&c.header)?,
                    c.claim.split('.').map(str::to_string).collect(),
                ))
            })
            .collect::<Result<_, String>>()?;
        let payload_header = match rule.output_payload_to_header.as_str() {
            "" => None,
            h => Some(header(h)?),
        };
        Ok(JwtRule {
            source: rule.source.clone(),
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            keys,
            locations,
            forward_original_token: rule.forward_original_token,
            claim_headers,
            payload_header,
        })
    }
}

/// The token at `location` of a request, if there is one.
pub fn extract<'r>(parts: &'r http::request::Parts, location: &Location) -> Option<&'r str> {
    match location {
        Location::Header { name, prefix } => parts.headers.get_all(name).iter().find_map(|v| {
            let v = v.to_str().ok()?.trim();
            let token = if prefix.is_empty() {
                v
            } else if v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix) {
                &v[prefix.len()..]
            } else {
                return None;
            };
            (!token.is_empty()).then_some(token.trim())
        }),
        Location::Param(name) => parts.uri.query().and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == name && !v.is_empty()).then_some(v)
            })
        }),
        Location::Cookie(name) => parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name && !v.is_empty()).then_some(v)
            }),
    }
}

/// The first token a request carries at any rule's locations, and where.
pub fn find_token<'r, 'a>(
    parts: &'r http::request::Parts,
    rules: impl Iterator<Item = &'a JwtRule>,
) -> Option<(String, Location)> {
    let mut seen: Vec<&Location> = Vec::new();
    for rule in rules {
        for l in &rule.locations {
            if seen.contains(&l) {
                continue;
            }
            seen.push(l);
            if let Some(t) = extract(parts, l) {
                return Some((t.to_string(), l.clone()));
            }
        }
    }
    None
}

/// Keys by JWKS URI, for the rules compiled in one rebuild.
pub type RemoteSet = HashMap<String, Arc<RemoteJwks>>;

#[cfg(test)]
mod tests;
