//! Stage 2: the route a request takes (its service port's route table), or straight to the
//! workload it addressed.

use std::net::SocketAddr;

use super::{Exchange, Local};
use crate::inbound::Target;
use crate::l7::matcher::PathCapture;
use crate::l7::route::{Route, RouteTable};
use crate::upstream::Endpoint;

/// Where the request goes next.
pub enum Decision<'r> {
    /// Through a route of the service.
    Route(Routed<'r>),
    /// A workload addressed directly (waypoint for a workload): no routes, straight to it.
    Direct(Endpoint),
}

/// The route a request takes, the table it is in, and what its path match captured.
#[derive(Clone, Copy, Debug)]
pub struct Routed<'r> {
    pub table: &'r RouteTable,
    pub route: &'r Route,
    pub capture: PathCapture<'r>,
}

/// Selects the route (its name goes to the log). No configuration for the service: 503;
/// no table for the port or no matching route: 404; an invalid route: 500 (all `NR`).
pub fn select<'r, B>(x: &mut Exchange<'r, B>) -> Result<Decision<'r>, Local> {
    let table = match (x.target, x.service) {
        (Target::Service { port, .. }, Some(s)) => s
            .table(*port, x.downstream.identity.namespace())
            .ok_or(Local::NO_ROUTE)?,
        (Target::Workload { workload, port }, _) => {
            let ip = workload.addresses.first().copied();
            return Ok(Decision::Direct(Endpoint::new(
                workload.clone(),
                SocketAddr::new(ip.ok_or(Local::NO_HEALTHY_UPSTREAM)?, *port),
            )));
        }
        (Target::Service { .. }, None) => return Err(Local::NOT_CONFIGURED),
    };
    let selected = table.select(&x.parts).ok_or(Local::NO_ROUTE)?;
    x.log.route = selected.route.name.to_string();
    if selected.route.is_invalid() {
        return Err(Local::INVALID_ROUTE);
    }
    Ok(Decision::Route(Routed {
        table,
        route: selected.route,
        capture: selected.capture,
    }))
}

#[cfg(test)]
mod tests {
    use ambient_proto::ambient::waypoint::v1 as pb;

    use super::*;
    use crate::pipeline::testing::{Fixture, get, path_prefix, route_to};

    fn decide(f: &Fixture, path: &str) -> (Result<Option<String>, Local>, String) {
        let mut x = f.exchange(get(path));
        let decision = select(&mut x).map(|d| match d {
            Decision::Route(r) => Some(r.route.name.to_string()),
            Decision::Direct(_) => None,
        });
        (decision, x.log.route)
    }

    /// GAMMA consumer routes: the client's namespace's routes replace the service's own for
    /// its requests only.
    #[test]
    fn a_client_namespace_with_consumer_routes_takes_them() {
        let mut f = Fixture::new();
        f.routes(vec![route_to(
            "producer",
            vec![],
            "shop/web.shop.svc.cluster.local",
        )]);
        f.consumer_routes(
            "elsewhere",
            vec![route_to(
                "theirs",
                vec![],
                "shop/api.shop.svc.cluster.local",
            )],
        );
        // The client (namespace `shop`) has none: the producer's route.
        assert_eq!(decide(&f, "/").0, Ok(Some("producer".into())));
        f.consumer_routes(
            "shop",
            vec![route_to(
                "mine",
                vec![path_prefix("/mine")],
                "shop/api.shop.svc.cluster.local",
            )],
        );
        assert_eq!(decide(&f, "/mine/x").0, Ok(Some("mine".into())));
        // Only its own table: no falling back to the producer's routes.
        assert_eq!(decide(&f, "/other").0.unwrap_err(), Local::NO_ROUTE);
    }

    #[test]
    fn the_first_matching_route_is_selected_and_logged() {
        let mut f = Fixture::new();
        f.routes(vec![
            route_to(
                "api",
                vec![path_prefix("/api")],
                "shop/api.shop.svc.cluster.local",
            ),
            route_to("rest", vec![], "shop/web.shop.svc.cluster.local"),
        ]);
        let (decision, logged) = decide(&f, "/api/v1");
        assert_eq!(decision, Ok(Some("api".to_string())));
        assert_eq!(logged, "api");
        assert_eq!(decide(&f, "/other").0, Ok(Some("rest".to_string())));
        let mut x = f.exchange(get("/api/v1"));
        let Ok(Decision::Route(r)) = select(&mut x) else {
            panic!("routed")
        };
        assert_eq!(r.capture, PathCapture::Prefix("/api"));
        assert_eq!(r.table.port(), 80);
    }

    #[test]
    fn no_configuration_is_503() {
        // Known from WDS, its L7 configuration (routes, policies) not arrived: refused, not
        // sent on with no policies.
        let f = Fixture::new().unconfigured();
        assert_eq!(decide(&f, "/").0, Err(Local::NOT_CONFIGURED));
        let f = Fixture::new().unknown();
        assert_eq!(decide(&f, "/").0, Err(Local::NOT_CONFIGURED));
        assert_eq!(Local::NOT_CONFIGURED.status.as_u16(), 503);
        assert_eq!(Local::NOT_CONFIGURED.flags, "NR");
    }

    #[test]
    fn an_unknown_port_is_404() {
        let f = Fixture::new().on_port(8080);
        assert_eq!(decide(&f, "/").0, Err(Local::NO_ROUTE));
        assert_eq!(Local::NO_ROUTE.status.as_u16(), 404);
        assert_eq!(Local::NO_ROUTE.flags, "NR");
    }

    #[test]
    fn no_matching_route_is_404() {
        let mut f = Fixture::new();
        f.routes(vec![route_to(
            "api",
            vec![path_prefix("/api")],
            "shop/api.shop.svc.cluster.local",
        )]);
        let (decision, logged) = decide(&f, "/web");
        assert_eq!(decision, Err(Local::NO_ROUTE));
        assert_eq!(logged, "");
    }

    #[test]
    fn an_invalid_route_is_500_and_logged() {
        let mut f = Fixture::new();
        let mut broken = route_to("broken", vec![], "shop/api.shop.svc.cluster.local");
        broken.filters.push(pb::Filter { kind: None });
        f.routes(vec![broken]);
        let (decision, logged) = decide(&f, "/");
        assert_eq!(decision, Err(Local::INVALID_ROUTE));
        assert_eq!(Local::INVALID_ROUTE.status.as_u16(), 500);
        assert_eq!(logged, "broken");
    }

    #[test]
    fn a_workload_target_bypasses_routes() {
        let mut f = Fixture::new().workload_target();
        f.routes(vec![route_to(
            "api",
            vec![path_prefix("/api")],
            "shop/api.shop.svc.cluster.local",
        )]);
        let mut x = f.exchange(get("/web"));
        let Ok(Decision::Direct(endpoint)) = select(&mut x) else {
            panic!("direct")
        };
        assert_eq!(endpoint.addr, "10.244.0.10:80".parse().unwrap());
        assert_eq!(x.log.route, "");
    }

    #[test]
    fn a_workload_without_address_has_no_healthy_upstream() {
        let f = Fixture::new().workload_target_without_address();
        assert_eq!(decide(&f, "/").0, Err(Local::NO_HEALTHY_UPSTREAM));
    }
}
