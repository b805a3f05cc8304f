//! The admin port (15000, loopback): `/config_dump` shows what this waypoint was told and
//! what it made of it; `/quitquitquit` stops it.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use proxy_core::admin::Body;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::context::Ctx;

#[derive(Serialize)]
struct ServiceDump {
    key: String,
    waypoint: String,
    ports: Vec<PortDump>,
    policies: Vec<String>,
}

#[derive(Serialize)]
struct PortDump {
    port: u16,
    protocol: String,
    routes: Vec<String>,
}

#[derive(Serialize)]
struct Dump {
    gateway: String,
    identity: String,
    services: Vec<ServiceDump>,
    gateway_policies: Vec<String>,
    errors: Vec<String>,
}

pub fn routes(
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
) -> impl Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    proxy_core::admin::admin_routes(move || dump(&ctx), shutdown)
}

fn dump(ctx: &Ctx) -> Dump {
    let routing = ctx.routing.load();
    let l7 = ctx.l7.load();
    let mut services: Vec<ServiceDump> = routing
        .services
        .iter()
        .filter(|(_, s)| s.config.as_ref().is_some_and(|c| !c.waypoint.is_empty()))
        .map(|(key, s)| {
            let mut ports: Vec<PortDump> = s
                .compiled
                .ports
                .values()
                .map(|t| PortDump {
                    port: t.port(),
                    protocol: t.protocol().as_str_name().to_string(),
                    routes: t.routes().iter().map(|r| r.name.to_string()).collect(),
                })
                .collect();
            ports.sort_by_key(|p| p.port);
            ServiceDump {
                key: key.clone(),
                waypoint: s
                    .config
                    .as_ref()
                    .map(|c| c.waypoint.clone())
                    .unwrap_or_default(),
                ports,
                policies: s
                    .config
                    .as_ref()
                    .map(|c| {
                        c.policies
                            .iter()
                            .map(|p| format!("{}/{}", p.namespace, p.name))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    services.sort_by(|a, b| a.key.cmp(&b.key));
    Dump {
        gateway: ctx.gateway_key(),
        identity: ctx.identity.to_string(),
        services,
        gateway_policies: l7
            .gateways
            .get(&ctx.gateway_key())
            .map(|g| {
                g.policies
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect()
            })
            .unwrap_or_default(),
        errors: routing.errors.clone(),
    }
}
