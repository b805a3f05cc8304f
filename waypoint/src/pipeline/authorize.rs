//! Stage 1: L7 authorization, against the Gateway's policies and the addressed service's.

use tracing::debug;

use super::{Exchange, Local};
use crate::l7::authz::{self, Policies, RequestAttributes};

/// Lets the request on, or denies it (403). Audited requests are logged either way.
pub fn check<B>(x: &Exchange<'_, B>) -> Result<(), Local> {
    let downstream = x.downstream;
    let attrs = RequestAttributes::http(
        &downstream.identity,
        downstream.addr.ip(),
        downstream.dst,
        &x.parts,
    )
    .with_auth(x.auth.as_ref());
    // A workload, or a service not configured yet, has no policies of its own.
    let none = Policies::default();
    let service = x.service.map_or(&none, |s| &s.compiled.policies);
    let verdict = authz::evaluate(&x.routing.gateway_policies, service, &attrs);
    let path = x.parts.uri.path();
    if !verdict.audited.is_empty() {
        tracing::info!(target: "audit", src = %downstream.identity, path = %path, policies = ?verdict.audited, allowed = verdict.allowed, "audited request");
    }
    if !verdict.allowed {
        debug!(src = %downstream.identity, path = %path, policy = verdict.policy.unwrap_or("no ALLOW policy matched"), "request denied by policy");
        return Err(Local::DENIED);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ambient_proto::ambient::waypoint::v1 as pb;

    use super::*;
    use crate::pipeline::testing::{Fixture, get};

    fn policy(name: &str, action: pb::Action, paths: &[&str]) -> pb::Policy {
        pb::Policy {
            namespace: "shop".into(),
            name: name.into(),
            action: action as i32,
            rules: vec![pb::Rule {
                to: vec![pb::Operation {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            match_all: false,
        }
    }

    fn outcome(f: &Fixture, path: &str) -> Result<(), Local> {
        check(&f.exchange(get(path)))
    }

    #[test]
    fn no_policies_allow() {
        let f = Fixture::new();
        assert_eq!(outcome(&f, "/"), Ok(()));
    }

    #[test]
    fn deny_answers_403_and_allow_lets_through() {
        let mut f = Fixture::new();
        f.service_policies(&[policy("no-admin", pb::Action::Deny, &["/admin*"])]);
        assert_eq!(outcome(&f, "/admin/users"), Err(Local::DENIED));
        assert_eq!(Local::DENIED.status, http::StatusCode::FORBIDDEN);
        assert_eq!(Local::DENIED.body, "RBAC: access denied");
        assert_eq!(outcome(&f, "/shop"), Ok(()));

        // An ALLOW policy at the gateway: what it does not allow is denied.
        f.gateway_policies(&[policy("only-shop", pb::Action::Allow, &["/shop"])]);
        assert_eq!(outcome(&f, "/shop"), Ok(()));
        assert_eq!(outcome(&f, "/other"), Err(Local::DENIED));
    }

    #[test]
    fn the_normalized_path_is_judged() {
        let mut f = Fixture::new();
        f.service_policies(&[policy("no-admin", pb::Action::Deny, &["/admin/*"])]);
        assert_eq!(outcome(&f, "/shop/../admin/x"), Err(Local::DENIED));
    }

    #[test]
    fn audit_does_not_change_the_outcome() {
        let mut f = Fixture::new();
        f.service_policies(&[policy("watch", pb::Action::Audit, &["*"])]);
        assert_eq!(outcome(&f, "/anything"), Ok(()));
        f.service_policies(&[
            policy("watch", pb::Action::Audit, &["*"]),
            policy("no-admin", pb::Action::Deny, &["/admin"]),
        ]);
        assert_eq!(outcome(&f, "/admin"), Err(Local::DENIED));
        assert_eq!(outcome(&f, "/shop"), Ok(()));
    }

    /// TCP passed through is judged by the same policies (rules only HTTP can show fail
    /// closed), and a service whose configuration has not arrived is refused outright.
    #[test]
    fn tcp_is_refused_until_the_service_is_configured() {
        use crate::routing::TcpRefusal;
        let mut f = Fixture::new();
        assert_eq!(f.authorize_tcp(), Ok(()));
        // Paths cannot be seen on TCP: a DENY on them denies all of it (as Istio's does).
        f.service_policies(&[policy("no-admin", pb::Action::Deny, &["/admin"])]);
        assert_eq!(
            f.authorize_tcp(),
            Err(TcpRefusal::Denied("shop/no-admin".into()))
        );
        f.service_policies(&[policy("only-shop", pb::Action::Allow, &["/shop"])]);
        assert_eq!(
            f.authorize_tcp(),
            Err(TcpRefusal::Denied("no ALLOW policy matched".into())),
            "an ALLOW on paths cannot match TCP"
        );
        assert_eq!(
            Fixture::new().unconfigured().authorize_tcp(),
            Err(TcpRefusal::NotConfigured)
        );
        assert_eq!(
            Fixture::new().unknown().authorize_tcp(),
            Err(TcpRefusal::NotConfigured)
        );
    }

    #[test]
    fn a_workload_has_only_gateway_policies() {
        let mut f = Fixture::new().workload_target();
        f.service_policies(&[policy("no-admin", pb::Action::Deny, &["/admin"])]);
        assert_eq!(outcome(&f, "/admin"), Ok(()));
        f.gateway_policies(&[policy("no-admin", pb::Action::Deny, &["/admin"])]);
        assert_eq!(outcome(&f, "/admin"), Err(Local::DENIED));
    }
}
