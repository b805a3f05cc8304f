//! JWT validation at the waypoint (`waypoint::l7::jwt`): a JWKS document and a token, both
//! attacker-chosen (a token comes from any client; a JWKS from an identity provider).
//!
//! Input: the JWKS, a line `---`, then the token. Checks: nothing panics; a token accepted
//! carries the claims it was checked for (the principal is `iss/sub` of its payload, its
//! expiry has not passed) and is accepted again; one whose signature bytes are changed is not.

#![no_main]

use std::time::{SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use waypoint::l7::jwt::{Jwks, Token};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((jwks, token)) = text.split_once("\n---\n") else {
        return;
    };
    let Ok(keys) = Jwks::parse(jwks) else {
        return;
    };
    let now = SystemTime::now();
    let audiences = vec!["shop".to_string()];
    let Ok(parsed) = Token::parse(token) else {
        return;
    };
    let issuer = parsed.issuer().to_string();
    let Ok(claims) = parsed.verify(&keys, &audiences, now) else {
        return;
    };
    let sub = claims
        .payload
        .get("sub")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    assert_eq!(claims.principal, format!("{issuer}/{sub}"));
    if let Some(exp) = claims.payload.get("exp").and_then(|v| v.as_f64()) {
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(secs < exp + 60.0, "an expired token was accepted");
    }
    assert_eq!(
        Token::parse(token).unwrap().verify(&keys, &audiences, now),
        Ok(claims)
    );
    // The signature changed in its last character: refused (unless the change only touched
    // base64url padding bits, which decode to the same bytes).
    let (signed, sig) = token.rsplit_once('.').unwrap();
    if let Some(last) = sig.chars().last() {
        let other = if last == 'A' { 'B' } else { 'A' };
        let changed = format!("{signed}.{}{other}", &sig[..sig.len() - 1]);
        if let Ok(t) = Token::parse(&changed) {
            let same_bytes = t.signature_bytes() == Token::parse(token).unwrap().signature_bytes();
            assert!(
                same_bytes || t.verify(&keys, &audiences, now).is_err(),
                "a changed signature was accepted"
            );
        }
    }
});
