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
