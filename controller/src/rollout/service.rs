//! The gRPC service the waypoints report backend health to (on the controller's 15012, beside
//! xDS and the CA, with the same bearer tokens).

use std::sync::Arc;
use std::time::Instant;

use ambient_proto::ambient::rollout::v1 as pb;
use pb::backend_health_server::BackendHealth;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::health::HealthStore;
use crate::ca::auth::{Authenticator, Caller, caller};

pub use pb::backend_health_server::BackendHealthServer;

pub struct HealthService {
    store: Arc<HealthStore>,
    auth: Arc<dyn Authenticator>,
}

impl HealthService {
    pub fn new(store: Arc<HealthStore>, auth: Arc<dyn Authenticator>) -> Self {
        HealthService { store, auth }
    }
}

#[tonic::async_trait]
impl BackendHealth for HealthService {
    /// Accepts a report from an authenticated proxy. A waypoint instance (authenticated by its
    /// own pod's token) may only report for a Gateway of its namespace; a node's token (the
    /// local runtime's waypoints use their node's) speaks for what runs on that node.
    async fn report(
        &self,
        request: Request<pb::HealthReport>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        let who = caller(self.auth.as_ref(), request.metadata())
            .await
            .map_err(|e| {
                metrics::counter!("ambient_health_reports_refused_total").increment(1);
                Status::unauthenticated(e.to_string())
            })?;
        let report = request.into_inner();
        if let Caller::Waypoint { namespace, .. } = &who
            && report.gateway.split_once('/').map(|(ns, _)| ns) != Some(namespace.as_str())
        {
            metrics::counter!("ambient_health_reports_refused_total").increment(1);
            warn!(gateway = %report.gateway, namespace = %namespace, "health report for another namespace's waypoint refused");
            return Err(Status::permission_denied(format!(
                "a waypoint of namespace {namespace} cannot report for {}",
                report.gateway
            )));
        }
        self.store.record(&report, Instant::now());
        metrics::counter!("ambient_health_reports_total").increment(1);
        Ok(Response::new(pb::ReportAck {}))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::future::BoxFuture;

    use super::*;
    use crate::ca::auth::AuthError;

    /// A fixed verdict for every token.
    struct Fixed(Option<Caller>);

    impl Authenticator for Fixed {
        fn authenticate<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
            let verdict = self.0.clone().ok_or(AuthError::UnknownToken);
            Box::pin(std::future::ready(verdict))
        }
    }

    fn report(gateway: &str) -> Request<pb::HealthReport> {
        let mut r = Request::new(pb::HealthReport {
            instance: "shop/waypoint-0".into(),
            gateway: gateway.into(),
            backends: vec![pb::BackendCounters {
                service: "shop/canary.shop.svc.cluster.local".into(),
                requests: 10,
                errors: 10,
                latency: vec![10],
            }],
            latency_bounds_ms: Vec::new(),
            uptime_ms: 1000,
        });
        r.metadata_mut()
            .insert("authorization", "Bearer t".parse().unwrap());
        r
    }

    fn waypoint_of(namespace: &str) -> Caller {
        Caller::Waypoint {
            namespace: namespace.into(),
            service_account: "waypoint".into(),
            pod: "waypoint-0".into(),
            node: "node-1".into(),
        }
    }

    fn recorded(store: &HealthStore) -> u64 {
        store
            .window(
                "shop/canary.shop.svc.cluster.local",
                Duration::from_secs(60),
                Instant::now(),
            )
            .requests
    }

    #[tokio::test]
    async fn reports_are_refused_unless_authenticated_and_for_the_callers_namespace() {
        let store = Arc::new(HealthStore::default());
        let refused = HealthService::new(store.clone(), Arc::new(Fixed(None)));
        let e = refused.report(report("shop/waypoint")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);

        let other = HealthService::new(store.clone(), Arc::new(Fixed(Some(waypoint_of("evil")))));
        let e = other.report(report("shop/waypoint")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(recorded(&store), 0, "nothing refused was recorded");

        let own = HealthService::new(store.clone(), Arc::new(Fixed(Some(waypoint_of("shop")))));
        own.report(report("shop/waypoint")).await.unwrap();
        let node = HealthService::new(
            store.clone(),
            Arc::new(Fixed(Some(Caller::Node("node-1".into())))),
        );
        node.report(report("shop/waypoint")).await.unwrap();
        assert_eq!(recorded(&store), 10, "a new instance's counts, once");
    }
}
