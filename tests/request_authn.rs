//! End-user authentication at a waypoint, end to end in the local runtime (`ambientctl up` on
//! tests/fixtures/jwt-e2e): an identity provider's JWKS served from outside the mesh, a
//! RequestAuthentication naming it by URI, and an AuthorizationPolicy on what the tokens say.
//! Valid RS256 and ES256 tokens pass; expired, foreign, wrongly addressed, forged and
//! malformed ones get 401; a request without a token is judged by authorization alone; a
//! claim decides an ALLOW rule; a key rotated at the JWKS URI is picked up.

#![forbid(unsafe_code)]

#[path = "support/ctl.rs"]
mod ctl;

use std::path::Path;
use std::time::Duration;

use ctl::Ctl;
use serde_json::{Value, json};
use waypoint::l7::jwt_testing::{Issuer, epoch, jwks};

const WAIT: Duration = Duration::from_secs(90);
const ISS: &str = "https://login.example.test";
const RSA_1: &[u8] = include_bytes!("fixtures/jwt/rsa-1.pem");
const RSA_2: &[u8] = include_bytes!("fixtures/jwt/rsa-2.pem");

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "sub": "alice", "aud": "shop", "exp": epoch(3600),
                       "groups": ["dev"]});
    for (k, v) in extra.as_object().expect("an object") {
        c[k] = v.clone();
    }
    c
}

fn jwks_server(dir: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: idp, namespace: outside, labels: {{app: idp}}}}
spec:
  containers:
  - name: files
    command: ["demo-app", "files", "--port", "8080", "--dir", "{}"]
"#,
        dir.display()
    )
}

fn policies(jwks_uri: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  jwtRules:
  - issuer: {ISS}
    audiences: [shop]
    jwksUri: {jwks_uri}
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: ["/api/*"]}}}}]
  - to: [{{operation: {{paths: ["/public/*"]}}}}]
  - to: [{{operation: {{paths: ["/admin/*"]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: [admin]}}]
"#
    )
}

/// `demo-app get` from the client with `token` (if any) as a bearer token.
fn request(ctl: &Ctl, path: &str, token: Option<&str>) -> std::process::Output {
    let url = format!("http://echo{path}");
    let auth = token.map(|t| format!("authorization: Bearer {t}"));
    let mut args = vec![
        "exec", "-n", "shop", "client", "--", "demo-app", "get", "-i",
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    args.push(&url);
    ctl.run(&args)
}

/// The status the request got.
fn status(ctl: &Ctl, path: &str, token: Option<&str>) -> u16 {
    let out = request(ctl, path, token);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"))
}

fn until_status(ctl: &Ctl, path: &str, token: &str, want: u16) {
    let start = std::time::Instant::now();
    loop {
        let got = status(ctl, path, Some(token));
        if got == want {
            return;
        }
        assert!(start.elapsed() < WAIT, "{path}: still {got}, not {want}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn tokens_are_checked_at_the_waypoint() {
    let scratch = tempfile::tempdir().unwrap();
    let jwks_dir = scratch.path().join("jwks");
    std::fs::create_dir_all(&jwks_dir).unwrap();
    let rsa = Issuer::rsa("r1", RSA_1);
    let ec = Issuer::ec("e1");
    std::fs::write(jwks_dir.join("keys.json"), jwks(&[&rsa, &ec])).unwrap();
    let (ctl, dir) = Ctl::up_fixture_with(scratch.path(), "jwt-e2e", |dir| {
        std::fs::write(dir.join("idp.yaml"), jwks_server(&jwks_dir)).unwrap();
    });
    let idp = ctl.workload("outside", |n| n == "idp");
    let idp_ip = idp["addresses"][0].as_str().expect("an address");
    let uri = format!("http://{idp_ip}:8080/keys.json");
    std::fs::write(dir.join("policies.yaml"), policies(&uri)).unwrap();

    // The policies are in force once a request without a token is refused.
    let start = std::time::Instant::now();
    while status(&ctl, "/api/orders", None) != 403 {
        assert!(start.elapsed() < WAIT, "the policies never applied");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Valid RS256 and ES256 tokens: through (once the keys are fetched), the token removed,
    // its subject as a header.
    let rs256 = rsa.token(&claims(json!({})));
    until_status(&ctl, "/api/orders", &rs256, 200);
    let out = request(&ctl, "/api/orders", Some(&rs256));
    let text = String::from_utf8_lossy(&out.stdout);
    let answer: Value = serde_json::from_str(text.lines().last().unwrap()).expect("JSON");
    assert_eq!(answer["headers"]["x-jwt-sub"], "alice", "{answer}");
    assert!(answer["headers"].get("authorization").is_none(), "{answer}");
    assert_eq!(
        status(&ctl, "/api/orders", Some(&ec.token(&claims(json!({}))))),
        200
    );

    // Refused with 401: expired, another issuer, another audience, forged, malformed.
    let forged = Issuer::rsa("r1", RSA_2).token(&claims(json!({})));
    for (what, token) in [
        ("expired", rsa.token(&claims(json!({"exp": epoch(-3600)})))),
        (
            "issuer",
            rsa.token(&claims(json!({"iss": "https://evil.example.test"}))),
        ),
        ("audience", ec.token(&claims(json!({"aud": "elsewhere"})))),
        ("signature", forged),
        ("malformed", "not-a-jwt".to_string()),
    ] {
        assert_eq!(status(&ctl, "/api/orders", Some(&token)), 401, "{what}");
    }

    // Without a token: authentication passes, authorization decides.
    assert_eq!(
        status(&ctl, "/api/orders", None),
        403,
        "requestPrincipals needs a token"
    );
    assert_eq!(status(&ctl, "/public/info", None), 200);

    // A claim decides.
    let admin = ec.token(&claims(json!({"groups": ["dev", "admin"]})));
    assert_eq!(status(&ctl, "/admin/users", Some(&admin)), 200);
    assert_eq!(status(&ctl, "/admin/users", Some(&rs256)), 403);

    // Key rotation at the URI: a token of the new key is accepted once the waypoint sees it
    // (it fetches again for a key id it does not know); the retired key's tokens are not.
    let rotated = Issuer::ec("e2");
    std::fs::write(jwks_dir.join("keys.json"), jwks(&[&rsa, &rotated])).unwrap();
    until_status(&ctl, "/api/orders", &rotated.token(&claims(json!({}))), 200);
    until_status(&ctl, "/api/orders", &ec.token(&claims(json!({}))), 401);
}
