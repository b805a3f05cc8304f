//! Issuing tokens, for tests of JWT validation (unit and end to end): an RSA key from a PEM
//! file or a new P-256 key, its JWKS entry, and tokens signed with it. Not an API.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

/// A signing key and the id its JWKS entry carries.
pub enum Issuer {
    Rsa { kid: String, key: RsaKeyPair },
    Ec { kid: String, key: EcdsaKeyPair },
}

impl Issuer {
    /// An RS256 issuer from a PKCS#8 PEM private key.
    pub fn rsa(kid: &str, pem: &[u8]) -> Issuer {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).expect("a PKCS#8 PEM key");
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("an RSA key");
        Issuer::Rsa {
            kid: kid.into(),
            key,
        }
    }

    /// An ES256 issuer with a new key.
    pub fn ec(kid: &str) -> Issuer {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("a P-256 key");
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("a P-256 key");
        Issuer::Ec {
            kid: kid.into(),
            key,
        }
    }

    /// Its public key as a JWK.
    pub fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match self {
            Issuer::Rsa { kid, key } => {
                let public: ring::rsa::PublicKeyComponents<Vec<u8>> = key.public().into();
                json!({
                    "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                    "n": b64(&public.n), "e": b64(&public.e),
                })
            }
            Issuer::Ec { kid, key } => {
                let point = key.public_key().as_ref();
                json!({
                    "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                })
            }
        }
    }

    /// A token with `claims`, signed (`kid` in its header).
    pub fn token(&self, claims: &Value) -> String {
        let (alg, kid) = match self {
            Issuer::Rsa { kid, .. } => ("RS256", kid),
            Issuer::Ec { kid, .. } => ("ES256", kid),
        };
        let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            Issuer::Rsa { key, .. } => {
                let mut sig = vec![0u8; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signed.as_bytes(),
                    &mut sig,
                )
                .expect("signing");
                sig
            }
            Issuer::Ec { key, .. } => key
                .sign(&rng, signed.as_bytes())
                .expect("signing")
                .as_ref()
                .to_vec(),
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// A JWKS document of these issuers' keys.
pub fn jwks(issuers: &[&Issuer]) -> String {
    json!({"keys": issuers.iter().map(|i| i.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Seconds since the epoch, `offset` from now.
pub fn epoch(offset: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    now + offset
}
