use std::time::SystemTime;

use serde_json::json;

use super::*;
use crate::l7::jwt_testing::{Issuer, epoch, jwks};

const RSA_PEM: &[u8] = include_bytes!("../../../../tests/fixtures/jwt/rsa-1.pem");
const ISS: &str = "https://issuer.example.test";

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": ["shop"], "exp": epoch(600), "azp": "web",
           "groups": ["admin", "dev"], "realm": {"role": "owner"}, "level": 3})
}

fn check(keys: &Jwks, token: &str, audiences: &[&str]) -> Result<Claims, JwtError> {
    let aud: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
    Token::parse(token)?.verify(keys, &aud, SystemTime::now())
}

#[test]
fn valid_rs256_and_es256_tokens_give_their_claims() {
    let rsa = Issuer::rsa("r1", RSA_PEM);
    let ec = Issuer::ec("e1");
    let keys = Jwks::parse(&jwks(&[&rsa, &ec])).unwrap();
    for issuer in [&rsa, &ec] {
        let c = check(&keys, &issuer.token(&claims()), &["shop"]).unwrap();
        assert_eq!(c.principal, format!("{ISS}/alice"));
        assert_eq!(
            (c.audiences.clone(), c.presenter.as_str()),
            (vec!["shop".to_string()], "web")
        );
        assert_eq!(c.values(&["groups".into()]), ["admin", "dev"]);
        assert_eq!(c.values(&["realm".into(), "role".into()]), ["owner"]);
        assert_eq!(c.values(&["level".into()]), ["3"]);
        assert!(c.values(&["missing".into()]).is_empty());
    }
    // Without audiences configured, any audience passes.
    assert!(check(&keys, &rsa.token(&claims()), &[]).is_ok());
}

#[test]
fn bad_tokens_are_refused_with_their_reason() {
    let rsa = Issuer::rsa("r1", RSA_PEM);
    let keys = Jwks::parse(&jwks(&[&rsa])).unwrap();
    let with = |extra: Value| {
        let mut c = claims();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        rsa.token(&c)
    };
    assert_eq!(
        check(&keys, &with(json!({"exp": epoch(-120)})), &[]),
        Err(JwtError::Expired)
    );
    // Within the clock skew, still valid.
    assert!(check(&keys, &with(json!({"exp": epoch(-30)})), &[]).is_ok());
    assert_eq!(
        check(&keys, &with(json!({"nbf": epoch(600)})), &[]),
        Err(JwtError::NotYetValid)
    );
    assert_eq!(
        check(&keys, &rsa.token(&claims()), &["other"]),
        Err(JwtError::Audience)
    );
    // Another key (same kid): the signature does not verify.
    let impostor = Issuer::rsa(
        "r1",
        include_bytes!("../../../../tests/fixtures/jwt/rsa-2.pem"),
    );
    assert_eq!(
        check(&keys, &impostor.token(&claims()), &[]),
        Err(JwtError::BadSignature)
    );
    // A payload changed after signing.
    let token = rsa.token(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(json!({"iss": ISS, "sub": "mallory"}).to_string());
    parts[1] = &forged;
    assert_eq!(
        check(&keys, &parts.join("."), &[]),
        Err(JwtError::BadSignature)
    );
    for malformed in ["", "a.b", "a.b.c.d", "!!.??.**", "e30.e30"] {
        assert!(
            matches!(
                check(&keys, malformed, &[]),
                Err(JwtError::Malformed | JwtError::BadJson)
            ),
            "{malformed}"
        );
    }
    // `alg: none` is not an algorithm we accept.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    assert_eq!(
        check(&keys, &none, &[]),
        Err(JwtError::UnsupportedAlgorithm)
    );
}

#[test]
fn jwks_documents_need_a_usable_key() {
    assert!(Jwks::parse("not json").is_err());
    assert!(Jwks::parse(r#"{"keys": []}"#).is_err());
    assert!(Jwks::parse(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
    let ec = Issuer::ec("e1");
    let mut doc: Value = serde_json::from_str(&jwks(&[&ec])).unwrap();
    doc["keys"][0]["use"] = json!("enc");
    assert!(
        Jwks::parse(&doc.to_string()).is_err(),
        "encryption keys are not for signatures"
    );
    let keys = Jwks::parse(&jwks(&[&ec])).unwrap();
    assert!(keys.has_kid("e1") && !keys.has_kid("e2"));
}

#[test]
fn tokens_are_found_where_rules_say() {
    let rule = |headers: Vec<pb::JwtHeader>, params: Vec<String>| {
        JwtRule::compile(
            &pb::JwtRule {
                issuer: ISS.into(),
                jwks: jwks(&[&Issuer::ec("e1")]),
                from_headers: headers,
                from_params: params,
                ..Default::default()
            },
            &mut |_, _| unreachable!("no remote keys"),
        )
        .unwrap()
    };
    let parts = |uri: &str, headers: &[(&str, &str)]| {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    };
    let default = rule(vec![], vec![]);
    let p = parts("/x", &[("authorization", "Bearer abc.def.ghi")]);
    assert_eq!(
        find_token(&p, [&default].into_iter()).unwrap().0,
        "abc.def.ghi"
    );
    let p = parts("/x?a=1&access_token=tok", &[]);
    assert_eq!(find_token(&p, [&default].into_iter()).unwrap().0, "tok");
    let p = parts("/x", &[("authorization", "Basic dXNlcg==")]);
    assert!(find_token(&p, [&default].into_iter()).is_none());

    let custom = rule(
        vec![pb::JwtHeader {
            name: "x-jwt".into(),
            prefix: "".into(),
        }],
        vec!["token".into()],
    );
    let p = parts(
        "/x",
        &[("x-jwt", "h.t.x"), ("authorization", "Bearer other")],
    );
    assert_eq!(find_token(&p, [&custom].into_iter()).unwrap().0, "h.t.x");
    let p = parts("/x?token=q.t.x", &[]);
    assert_eq!(find_token(&p, [&custom].into_iter()).unwrap().0, "q.t.x");
    // Only where the rules look.
    let p = parts("/x", &[("authorization", "Bearer other")]);
    assert!(find_token(&p, [&custom].into_iter()).is_none());
}
