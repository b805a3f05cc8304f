//! Test fixtures for the stages: a routing snapshot compiled with the `l7` constructors, a
//! request's target and peer, and an upstream that records what it is sent and answers as
//! scripted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ambient_proto::ambient::waypoint::v1 as pb;
use ambient_proto::hbone::HboneError;
use ambient_proto::identity::Identity;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use proxy_core::state::{Protocol, Service, ServicePort, Workload};

use super::{Exchange, Upstream};
use crate::inbound::{Downstream, Target};
use crate::l7::authz::Policies;
use crate::l7::backend::BackendRef;
use crate::l7::balance::{Balancer, BalancerPolicy};
use crate::l7::limits::ConnectionLimits;
use crate::l7::route::RouteTable;
use crate::routing::{CompiledService, EndpointKey, RoutingSnapshot, ServiceRouting};
use crate::upstream::{Body, Endpoint, HttpVersion, TunnelContext, UpstreamError};

/// The service requests are addressed to (port 80).
pub const WEB: &str = "shop/web.shop.svc.cluster.local";
/// Another service, a backend for routes.
pub const API: &str = "shop/api.shop.svc.cluster.local";
/// The service port of both; endpoints serve it on `TARGET_PORT`.
const PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;

/// A request as tests make them.
pub type Request = http::Request<Full<Bytes>>;

pub fn get(path: &str) -> Request {
    post(path, Bytes::new())
}

pub fn post(path: &str, body: impl Into<Bytes>) -> Request {
    http::Request::builder()
        .uri(path)
        .header(http::header::HOST, "web.shop:80")
        .body(Full::new(body.into()))
        .expect("valid request")
}

/// A route sending everything it matches to `backend` (port 80).
pub fn route_to(name: &str, matches: Vec<pb::RouteMatch>, backend: &str) -> pb::Route {
    pb::Route {
        name: name.into(),
        matches,
        backends: vec![pb::Backend {
            service: backend.into(),
            port: u32::from(PORT),
            weight: 1,
            filters: vec![],
        }],
        ..Default::default()
    }
}

/// Retries of the listed statuses.
pub fn retry(attempts: u32, codes: &[u32]) -> pb::RetryPolicy {
    pb::RetryPolicy {
        attempts,
        codes: codes.to_vec(),
        ..Default::default()
    }
}

pub fn path_prefix(prefix: &str) -> pb::RouteMatch {
    pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: Some(pb::path_match::Kind::Prefix(prefix.into())),
        }),
        ..Default::default()
    }
}

pub(crate) fn workload(name: &str, ip: &str) -> Arc<Workload> {
    Arc::new(Workload {
        uid: format!("Kubernetes//Pod/shop/{name}"),
        name: name.into(),
        namespace: "shop".into(),
        addresses: ip.parse().into_iter().collect(),
        hostname: None,
        protocol: Protocol::Hbone,
        identity: Identity::new("cluster.local", "shop", name).expect("valid identity"),
        node: String::new(),
        canonical_name: name.into(),
        canonical_revision: String::new(),
        workload_name: name.into(),
        cluster_id: String::new(),
        region: String::new(),
        zone: String::new(),
        healthy: true,
        services: BTreeMap::new(),
        authorization_policies: Vec::new(),
        waypoint: None,
        host_network: false,
    })
}

/// A service `shop/<name>.shop.svc.cluster.local` on port 80 with endpoints at `ips`, its
/// route table the default (everything to itself).
fn service(name: &str, ips: &[&str]) -> ServiceRouting {
    let service = Arc::new(Service {
        name: name.into(),
        namespace: "shop".into(),
        hostname: format!("{name}.shop.svc.cluster.local"),
        vips: Vec::new(),
        ports: vec![ServicePort {
            service_port: PORT,
            target_port: TARGET_PORT,
        }],
        waypoint: None,
        passthrough: false,
        namespace_only: false,
    });
    let endpoints = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| EndpointKey(workload(&format!("{name}-{i}"), ip)));
    // What the controller sends for every service a waypoint carries.
    let config = pb::ServiceConfig {
        namespace: "shop".into(),
        name: name.into(),
        hostname: service.hostname.clone(),
        waypoint: "shop/waypoint".into(),
        ..Default::default()
    };
    let mut routing = ServiceRouting {
        service,
        config: Some(Arc::new(config)),
        compiled: Arc::default(),
        limits: ConnectionLimits::new(None, None),
        balancer: Balancer::new(
            BalancerPolicy::compile(None).0,
            endpoints,
            None,
            Instant::now(),
        ),
        origination: HashMap::new(),
        jwt_rules: Box::default(),
    };
    set_routes(&mut routing, Vec::new());
    routing
}

fn compile_routes(s: &ServiceRouting, routes: Vec<pb::Route>) -> RouteTable {
    let port = pb::PortConfig {
        port: u32::from(PORT),
        protocol: pb::AppProtocol::Http1 as i32,
        routes,
        consumer_routes: Vec::new(),
    };
    let default = BackendRef {
        service: s.service.key().into(),
        port: PORT,
    };
    let (table, errors) = RouteTable::compile(&port, default);
    assert!(
        errors.iter().all(|e| e.to_string().contains("unknown")),
        "{errors:?}"
    );
    table
}

fn set_routes(s: &mut ServiceRouting, routes: Vec<pb::Route>) {
    let table = compile_routes(s, routes);
    compiled_mut(s).ports.insert(PORT, table);
}

/// A fixture service's compiled configuration, to edit.
fn compiled_mut(s: &mut ServiceRouting) -> &mut CompiledService {
    Arc::get_mut(&mut s.compiled).expect("not shared")
}

fn policies(p: &[pb::Policy]) -> Policies {
    let (compiled, errors) = Policies::compile(p);
    assert!(errors.is_empty(), "{errors:?}");
    compiled
}

/// A request's surroundings: where it is sent, by whom, and the routing it meets.
pub struct Fixture {
    target: Target,
    downstream: Arc<Downstream>,
    routing: RoutingSnapshot,
}

impl Fixture {
    /// A request to `WEB` port 80 (one endpoint, default routes), `API` with two endpoints.
    pub fn new() -> Self {
        let web = service("web", &["10.244.0.10"]);
        let target = Target::Service {
            service: web.service.clone(),
            port: PORT,
        };
        let api = service("api", &["10.244.1.1", "10.244.1.2"]);
        let services = HashMap::from([
            (WEB.to_string(), Arc::new(web)),
            (API.to_string(), Arc::new(api)),
        ]);
        Fixture {
            target,
            downstream: Arc::new(Downstream {
                identity: Identity::new("cluster.local", "shop", "frontend").expect("valid"),
                addr: "10.244.2.3:40000".parse().expect("valid"),
                workload: None,
                dst: "10.96.0.20:80".parse().expect("valid"),
            }),
            routing: RoutingSnapshot {
                services,
                ..Default::default()
            },
        }
    }

    /// `WEB` with one route, `r`, sending everything to `API`, as `edit` makes it.
    pub fn one_route(edit: impl FnOnce(&mut pb::Route)) -> Self {
        let mut f = Fixture::new();
        let mut r = route_to("r", vec![], API);
        edit(&mut r);
        f.routes(vec![r]);
        f
    }

    /// The request as it enters the pipeline.
    pub fn exchange(&self, req: Request) -> Exchange<'_, Full<Bytes>> {
        Exchange::new(
            Instant::now(),
            req,
            &self.target,
            &self.downstream,
            &self.routing,
        )
    }

    fn service_mut(&mut self, key: &str) -> &mut ServiceRouting {
        let s = self
            .routing
            .services
            .get_mut(key)
            .expect("a fixture service");
        Arc::get_mut(s).expect("not shared")
    }

    /// A TCP connection to the fixture's target, judged as the passthrough judges it.
    pub fn authorize_tcp(&self) -> Result<(), crate::routing::TcpRefusal> {
        self.routing.authorize_tcp(&self.target, &self.downstream)
    }

    /// `WEB`'s routes on port 80.
    pub fn routes(&mut self, routes: Vec<pb::Route>) {
        set_routes(self.service_mut(WEB), routes);
    }

    /// `WEB`'s consumer routes on port 80 for clients in `namespace` (the fixture's client is
    /// in `shop`).
    pub fn consumer_routes(&mut self, namespace: &str, routes: Vec<pb::Route>) {
        let web = self.service_mut(WEB);
        let table = compile_routes(web, routes);
        compiled_mut(web)
            .consumers
            .entry(namespace.to_string())
            .or_default()
            .insert(PORT, table);
    }

    /// `WEB`'s route table on port 80.
    pub fn table(&self) -> &RouteTable {
        &self.routing.services[WEB].compiled.ports[&PORT]
    }

    pub fn service(&self, key: &str) -> &ServiceRouting {
        &self.routing.services[key]
    }

    /// Rate limits on the waypoint's Gateway, on `WEB`, and on `WEB`'s routes (each route's
    /// own `rate_limits` are compiled with it by [`Fixture::routes`]).
    pub fn rate_limits(&mut self, gateway: &[pb::RateLimit], web: &[pb::RateLimit]) {
        let mut errors = Vec::new();
        let mut limiters = crate::l7::ratelimit::Limiters::default();
        self.routing.gateway_rate_limits = limiters.attach("gateway", gateway, &mut errors);
        compiled_mut(self.service_mut(WEB)).rate_limits = limiters.attach("web", web, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// A service's load balancing, outlier detection and limits.
    pub fn traffic(&mut self, key: &str, traffic: pb::TrafficPolicy) {
        let s = self.service_mut(key);
        let (policy, problems) = BalancerPolicy::compile(Some(&traffic));
        assert!(problems.is_empty(), "{problems:?}");
        let keys: Vec<EndpointKey> = s.balancer.endpoints().map(|e| e.key().clone()).collect();
        s.balancer = Balancer::new(policy, keys, None, Instant::now());
        s.limits = ConnectionLimits::new(traffic.connection_pool.as_ref(), None);
    }

    /// A service whose endpoints are all gone.
    pub fn no_endpoints(&mut self, key: &str) {
        let s = self.service_mut(key);
        s.balancer = Balancer::new(BalancerPolicy::compile(None).0, [], None, Instant::now());
    }

    pub fn service_policies(&mut self, p: &[pb::Policy]) {
        compiled_mut(self.service_mut(WEB)).policies = policies(p);
    }

    /// RequestAuthentication rules on `WEB` (inline keys only).
    pub fn service_jwt_rules(&mut self, rules: &[pb::JwtRule]) {
        self.service_mut(WEB).jwt_rules = rules
            .iter()
            .map(|r| {
                let rule = crate::l7::jwt::JwtRule::compile(r, &mut |_, _| {
                    unreachable!("remote keys are not for pipeline tests")
                })
                .expect("a valid rule");
                Arc::new(rule)
            })
            .collect();
    }

    pub fn gateway_policies(&mut self, p: &[pb::Policy]) {
        self.routing.gateway_policies = policies(p);
    }

    /// `WEB` not in the snapshot at all.
    pub fn unknown(mut self) -> Self {
        self.routing.services.remove(WEB);
        self
    }

    /// `WEB` known from WDS, its L7 configuration not arrived yet.
    pub fn unconfigured(mut self) -> Self {
        self.service_mut(WEB).config = None;
        self
    }

    /// The request sent to another port of `WEB`.
    pub fn on_port(mut self, port: u16) -> Self {
        let Target::Service { service, .. } = self.target else {
            unreachable!("a service target")
        };
        self.target = Target::Service { service, port };
        self
    }

    /// The request addressed to `WEB`'s endpoint as a workload.
    pub fn workload_target(mut self) -> Self {
        let endpoint = self.service(WEB).balancer.endpoints().next();
        let workload = endpoint.expect("an endpoint").key().0.clone();
        self.target = Target::Workload {
            workload,
            port: PORT,
        };
        self
    }

    /// The request addressed to a workload that has no address.
    pub fn workload_target_without_address(mut self) -> Self {
        self.target = Target::Workload {
            workload: workload("gone", "none"),
            port: PORT,
        };
        self
    }
}

/// What the fake upstream does with one request.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// No tunnel to the endpoint (`UF`).
    ConnectFailure,
    /// Never answers.
    Hang,
}

/// A request the fake upstream received.
#[derive(Debug)]
pub struct Sent {
    pub addr: SocketAddr,
    pub version: HttpVersion,
    pub head: http::request::Parts,
    pub body: Bytes,
    pub traceparent: Option<String>,
}

/// An upstream that records requests and answers them as scripted (then 200s).
#[derive(Default)]
pub struct FakeUpstream {
    replies: Mutex<VecDeque<Reply>>,
    sent: Mutex<Vec<Sent>>,
    received: tokio::sync::Notify,
}

impl FakeUpstream {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn replying(replies: impl IntoIterator<Item = Reply>) -> Arc<Self> {
        let upstream = FakeUpstream::default();
        upstream.replies.lock().expect("poisoned").extend(replies);
        Arc::new(upstream)
    }

    /// The requests received so far.
    pub fn sent(&self) -> std::sync::MutexGuard<'_, Vec<Sent>> {
        self.sent.lock().expect("poisoned")
    }

    /// Waits until `n` requests were received (spawned senders: mirrors).
    pub async fn wait_for(&self, n: usize) -> std::sync::MutexGuard<'_, Vec<Sent>> {
        loop {
            let received = self.received.notified();
            if self.sent().len() >= n {
                return self.sent();
            }
            received.await;
        }
    }
}

impl Upstream for FakeUpstream {
    type Body = Full<Bytes>;

    async fn send(
        &self,
        endpoint: &Endpoint,
        version: HttpVersion,
        req: http::Request<Body>,
        tunnel: &TunnelContext,
        _limits: Option<&ConnectionLimits>,
    ) -> Result<http::Response<Full<Bytes>>, UpstreamError> {
        let reply = self
            .replies
            .lock()
            .expect("poisoned")
            .pop_front()
            .unwrap_or(Reply::Status(200));
        let (head, body) = req.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes());
        self.sent().push(Sent {
            addr: endpoint.addr,
            version,
            head,
            body: body.unwrap_or_default(),
            traceparent: tunnel.traceparent.clone(),
        });
        self.received.notify_waiters();
        match reply {
            Reply::Status(code) => {
                let mut r = http::Response::new(Full::new(Bytes::from_static(b"upstream")));
                *r.status_mut() = StatusCode::from_u16(code).expect("a status");
                Ok(r)
            }
            Reply::ConnectFailure => Err(UpstreamError::Connect {
                endpoint: endpoint.addr,
                source: HboneError::Timeout(std::time::Duration::from_secs(1)),
            }),
            Reply::Hang => std::future::pending().await,
        }
    }
}

/// The address of a fixture endpoint, as the upstream is sent to it.
pub fn endpoint_addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("an address"), TARGET_PORT)
}
