//! The compiled form of the L7 configuration, rebuilt when the controller changes it, and the
//! per-service state that must outlive rebuilds (request limits, outlier detection).
//!
//! The request path loads one [`RoutingSnapshot`] (lock-free) and finds everything there:
//! route tables per service port, policies, limits, and endpoints per backend.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ambient_proto::ambient::waypoint::v1 as pb;
use arc_swap::ArcSwap;
use proxy_core::state::{Service, ServicePort, Snapshot, Workload};

use crate::config::L7Snapshot;
use crate::egress::Origination;
use crate::l7::ConfigError;
use crate::l7::authz::{self, Policies};
use crate::l7::backend::BackendRef;
use crate::l7::balance::{Balancer, BalancerPolicy, Pick};
use crate::l7::jwks::{self, RemoteJwks};
use crate::l7::jwt::{JwtRule, Keys, RemoteSet};
use crate::l7::limits::ConnectionLimits;
use crate::l7::ratelimit::{LimiterKey, Limiters, RateLimiter};
use crate::l7::route::RouteTable;
use crate::upstream::Endpoint;

/// An endpoint as the balancer knows it: the workload (same uid, identity and addresses is
/// the same endpoint, so its in-flight count and ejection survive rebuilds).
#[derive(Clone, Debug)]
pub struct EndpointKey(pub Arc<Workload>);

impl PartialEq for EndpointKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.uid == other.0.uid
            && self.0.identity == other.0.identity
            && self.0.addresses == other.0.addresses
    }
}

impl Eq for EndpointKey {}

impl Hash for EndpointKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.uid.hash(state);
    }
}

/// How traffic to one service is routed and guarded.
pub struct ServiceRouting {
    pub service: Arc<Service>,
    pub config: Option<Arc<pb::ServiceConfig>>,
    /// Routes, policies and rate limits, compiled from `config` for `service`.
    pub compiled: Arc<CompiledService>,
    pub limits: ConnectionLimits,
    /// Endpoints and the choice among them.
    pub balancer: Balancer<EndpointKey>,
    /// TLS originated to its endpoints outside the mesh, by service port.
    pub origination: HashMap<u16, Origination>,
    /// RequestAuthentication rules targeting the service.
    pub jwt_rules: Box<[Arc<JwtRule>]>,
}

/// What a service's L7 configuration compiles to. A rebuild keeps it while the configuration
/// and the service are the same: an endpoint change anywhere in the mesh must not compile
/// every route's regular expressions again (`bench waypoint-config`).
#[derive(Default)]
pub struct CompiledService {
    /// Route tables by service port.
    pub ports: HashMap<u16, RouteTable>,
    /// Consumer routes (GAMMA), by client namespace, then service port: a request from a
    /// client in one of these namespaces takes these instead of `ports`.
    pub consumers: HashMap<String, HashMap<u16, RouteTable>>,
    /// Policies targeting the service.
    pub policies: Policies,
    /// LocalRateLimitPolicies targeting the service.
    pub rate_limits: Box<[Arc<RateLimiter>]>,
    /// Every rate limiter the routes and the service attach, for the rebuild's set.
    limiters: Vec<(LimiterKey, Arc<RateLimiter>)>,
    /// Problems found compiling it, reported again by every rebuild that keeps it.
    errors: Vec<String>,
    limit_errors: Vec<ConfigError>,
}

impl CompiledService {
    /// Compiles `config` (the default routes without one) for `service`, attaching rate
    /// limiters in `limiters`, a part of the rebuild's.
    fn compile(
        key: &str,
        service: &Service,
        config: Option<&pb::ServiceConfig>,
        mut limiters: Limiters,
    ) -> CompiledService {
        let mut errors = Vec::new();
        let mut limit_errors = Vec::new();
        let mut ports = HashMap::new();
        let mut consumers: HashMap<String, HashMap<u16, RouteTable>> = HashMap::new();
        for port in &service.ports {
            let port_config = config
                .and_then(|c| {
                    c.ports
                        .iter()
                        .find(|p| p.port == u32::from(port.service_port))
                })
                .cloned()
                .unwrap_or(pb::PortConfig {
                    port: u32::from(port.service_port),
                    ..Default::default()
                });
            let default = BackendRef {
                service: key.into(),
                port: port.service_port,
            };
            for c in &port_config.consumer_routes {
                // Same port and protocol; only the routes differ.
                let consumer_port = pb::PortConfig {
                    routes: c.routes.clone(),
                    consumer_routes: Vec::new(),
                    ..port_config.clone()
                };
                let (table, errs) =
                    RouteTable::compile_with(&consumer_port, default.clone(), &mut limiters);
                errors.extend(
                    errs.iter()
                        .map(|e| format!("{key} (from namespace {}): {e}", c.namespace)),
                );
                consumers
                    .entry(c.namespace.clone())
                    .or_default()
                    .insert(port.service_port, table);
            }
            let (table, errs) = RouteTable::compile_with(&port_config, default, &mut limiters);
            errors.extend(errs.iter().map(|e| format!("{key}: {e}")));
            ports.insert(port.service_port, table);
        }
        let (policies, errs) = match config {
            Some(c) => Policies::compile(&c.policies),
            None => (Policies::default(), Vec::new()),
        };
        errors.extend(errs.iter().map(|e| format!("{key}: {e}")));
        let rate_limits = limiters.attach(
            &format!("service {key}"),
            config.map(|c| &c.rate_limits[..]).unwrap_or(&[]),
            &mut limit_errors,
        );
        CompiledService {
            ports,
            consumers,
            policies,
            rate_limits,
            limiters: limiters.into_attached(),
            errors,
            limit_errors,
        }
    }
}

/// Whether `old` was compiled from this configuration for this service (the same, or equal).
fn compiled_from(
    old: &ServiceRouting,
    service: &Arc<Service>,
    config: Option<&Arc<pb::ServiceConfig>>,
) -> bool {
    let same_config = match (&old.config, config) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        (None, None) => true,
        _ => false,
    };
    same_config && (Arc::ptr_eq(&old.service, service) || old.service == *service)
}

/// Everything the request path needs, at one moment.
#[derive(Default)]
pub struct RoutingSnapshot {
    /// By `namespace/hostname`.
    pub services: HashMap<String, Arc<ServiceRouting>>,
    /// Policies targeting this waypoint's Gateway.
    pub gateway_policies: Policies,
    /// RequestAuthentication rules targeting this waypoint's Gateway.
    pub gateway_jwt_rules: Box<[Arc<JwtRule>]>,
    /// Keys fetched from JWKS URIs, by URI (kept for the next rebuild).
    pub remote_jwks: RemoteSet,
    /// LocalRateLimitPolicies targeting this waypoint's Gateway.
    pub gateway_rate_limits: Box<[Arc<RateLimiter>]>,
    /// Every rate limiter in use (kept for the next rebuild and swept of idle clients).
    pub rate_limiters: Limiters,
    /// Configuration problems found while compiling (shown in `/config_dump`).
    pub errors: Vec<String>,
}

/// The current snapshot; rebuilt by [`Routing::rebuild`].
#[derive(Default)]
pub struct Routing {
    current: ArcSwap<RoutingSnapshot>,
}

impl Routing {
    pub fn load(&self) -> Arc<RoutingSnapshot> {
        self.current.load_full()
    }

    /// Recompiles from the latest L7 configuration and WDS state, carrying over the state of
    /// services that still exist.
    pub fn rebuild(&self, gateway_key: &str, l7: &L7Snapshot, state: &Snapshot) {
        let previous = self.current.load_full();
        let mut errors = Vec::new();
        let mut limiters = Limiters::rebuilding(&previous.rate_limiters);
        let mut limit_errors = Vec::new();
        let mut remote = JwksSet::rebuilding(&previous.remote_jwks);
        let gateway_jwt_rules = l7
            .gateways
            .get(gateway_key)
            .map(|g| remote.compile(&g.jwt_rules, &mut errors, "gateway"))
            .unwrap_or_default();
        let (gateway_policies, gateway_rate_limits) = match l7.gateways.get(gateway_key) {
            Some(g) => {
                let (p, errs) = Policies::compile(&g.policies);
                errors.extend(errs.iter().map(|e| e.to_string()));
                let limits = limiters.attach(
                    &format!("gateway {gateway_key}"),
                    &g.rate_limits,
                    &mut limit_errors,
                );
                (p, limits)
            }
            None => (Policies::default(), Box::default()),
        };
        let mut services = HashMap::new();
        for service in state.services() {
            let key = service.key();
            let config = l7.services.get(&key).cloned();
            let old = previous.services.get(&key);
            let compiled = match old {
                Some(o) if compiled_from(o, service, config.as_ref()) => o.compiled.clone(),
                _ => Arc::new(CompiledService::compile(
                    &key,
                    service,
                    config.as_deref(),
                    limiters.part(),
                )),
            };
            limiters.keep(&compiled.limiters);
            errors.extend(compiled.errors.iter().cloned());
            limit_errors.extend(compiled.limit_errors.iter().cloned());
            let traffic = config.as_ref().and_then(|c| c.traffic_policy.as_ref());
            let limits = ConnectionLimits::new(
                traffic.and_then(|t| t.connection_pool.as_ref()),
                old.map(|o| &o.limits),
            );
            let (policy, problems) = BalancerPolicy::compile(traffic);
            errors.extend(problems.iter().map(|p| format!("{key}: {p}")));
            let balancer = Balancer::new(
                policy,
                endpoints(state, service),
                old.map(|o| &o.balancer),
                Instant::now(),
            );
            let jwt_rules = config
                .as_ref()
                .map(|c| remote.compile(&c.jwt_rules, &mut errors, &key))
                .unwrap_or_default();
            let origination = origination(service, traffic, old.map(|o| &o.origination));
            for (port, o) in &origination {
                if let Origination::Broken(reason) = o {
                    errors.push(format!(
                        "{key} port {port}: TLS origination unusable, connections fail: {reason}"
                    ));
                }
            }
            services.insert(
                key,
                Arc::new(ServiceRouting {
                    service: service.clone(),
                    config,
                    compiled,
                    limits,
                    balancer,
                    origination,
                    jwt_rules,
                }),
            );
        }
        errors.extend(limit_errors.iter().map(|e| e.to_string()));
        self.current.store(Arc::new(RoutingSnapshot {
            services,
            gateway_policies,
            gateway_jwt_rules,
            remote_jwks: remote.used,
            gateway_rate_limits,
            rate_limiters: limiters,
            errors,
        }));
    }
}

/// The JWKS URIs a rebuild uses: those of the previous snapshot are kept (with their keys
/// and refresh task) when the URI and timeout are the same.
struct JwksSet<'p> {
    previous: &'p RemoteSet,
    used: RemoteSet,
}

impl<'p> JwksSet<'p> {
    fn rebuilding(previous: &'p RemoteSet) -> Self {
        JwksSet {
            previous,
            used: RemoteSet::new(),
        }
    }

    /// Compiles `rules` (of `owner`, for errors); rules that do not compile are left out.
    fn compile(
        &mut self,
        rules: &[pb::JwtRule],
        errors: &mut Vec<String>,
        owner: &str,
    ) -> Box<[Arc<JwtRule>]> {
        let (previous, used) = (self.previous, &mut self.used);
        let mut remote = |uri: &str, timeout| -> Arc<RemoteJwks> {
            let key = format!("{timeout:?} {uri}");
            used.entry(key.clone())
                .or_insert_with(|| {
                    previous
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(|| RemoteJwks::new(uri, timeout, jwks::REFRESH))
                })
                .clone()
        };
        rules
            .iter()
            .filter_map(|r| match JwtRule::compile(r, &mut remote) {
                Ok(rule) => {
                    if let Keys::Inline(Err(e)) = &rule.keys {
                        errors.push(format!(
                            "{owner}: RequestAuthentication {} issuer {}: {e}; its tokens are refused",
                            r.source, r.issuer
                        ));
                    }
                    Some(Arc::new(rule))
                }
                Err(e) => {
                    errors.push(format!("{owner}: RequestAuthentication {}: {e}", r.source));
                    None
                }
            })
            .collect()
    }
}

/// A service's healthy endpoints with an address or a name.
fn endpoints(state: &Snapshot, service: &Service) -> Vec<EndpointKey> {
    state
        .endpoints(service)
        .iter()
        .filter(|w| w.healthy && (!w.addresses.is_empty() || w.hostname.is_some()))
        .map(|w| EndpointKey(w.clone()))
        .collect()
}

/// The TLS to originate on each port of `service` (its DestinationRule's `tls`, replaced per
/// port by `portLevelSettings`); what was compiled before from the same settings is kept.
fn origination(
    service: &Service,
    traffic: Option<&pb::TrafficPolicy>,
    old: Option<&HashMap<u16, Origination>>,
) -> HashMap<u16, Origination> {
    let mut out = HashMap::new();
    let Some(traffic) = traffic else {
        return out;
    };
    for port in &service.ports {
        let number = port.service_port;
        let tls = traffic
            .port_tls
            .iter()
            .find(|p| p.port == u32::from(number))
            .map(|p| p.tls.as_ref())
            .unwrap_or(traffic.tls.as_ref());
        let Some(tls) = tls.filter(|t| t.mode() == pb::client_tls::Mode::Simple) else {
            continue;
        };
        let kept = old
            .and_then(|o| o.get(&number))
            .filter(|o| o.source() == Some(tls))
            .cloned();
        out.insert(
            number,
            kept.unwrap_or_else(|| Origination::compile(tls, &service.hostname)),
        );
    }
    out
}

impl ServiceRouting {
    /// The route table of `port` for a client in `client_namespace`: its namespace's consumer
    /// routes when it has some, else the service's own.
    pub fn table(&self, port: u16, client_namespace: &str) -> Option<&RouteTable> {
        self.compiled
            .consumers
            .get(client_namespace)
            .and_then(|ports| ports.get(&port))
            .or_else(|| self.compiled.ports.get(&port))
    }

    /// The endpoint a pick names, serving `service_port`.
    pub fn endpoint(&self, pick: &Pick<EndpointKey>, service_port: u16) -> Endpoint {
        let workload = pick.key().0.clone();
        let mut endpoint = Endpoint::new(
            workload.clone(),
            self.endpoint_addr(&workload, service_port),
        );
        if !endpoint.in_mesh() {
            endpoint.origination = self.origination.get(&service_port).cloned();
        }
        endpoint
    }

    /// The address a workload serves `service_port` on.
    fn endpoint_addr(&self, workload: &Workload, service_port: u16) -> SocketAddr {
        let port = self
            .service
            .ports
            .iter()
            .find(|p| p.service_port == service_port)
            .copied()
            .unwrap_or(ServicePort {
                service_port,
                target_port: service_port,
            });
        // An endpoint known by name gets its address when picked (`Upstreams::resolve`).
        let ip = workload
            .addresses
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        SocketAddr::new(ip, workload.target_port(&self.service.key(), &port))
    }
}

impl RoutingSnapshot {
    pub fn service(&self, key: &str) -> Option<&Arc<ServiceRouting>> {
        self.services.get(key)
    }

    /// The routing of a service whose L7 configuration has arrived. A service known from
    /// WDS but not yet configured has no policies here that could be trusted (they may be on
    /// their way), so nothing addressed to it may pass: callers refuse it (`NR`).
    pub fn configured(&self, key: &str) -> Option<&Arc<ServiceRouting>> {
        self.services.get(key).filter(|s| s.config.is_some())
    }

    /// L4 authorization of a passed-through TCP connection: the gateway's and the service's
    /// policies, judged on what TCP can show (HTTP-only rules fail closed). A service whose
    /// configuration has not arrived is refused.
    pub fn authorize_tcp(
        &self,
        target: &crate::inbound::Target,
        downstream: &crate::inbound::Downstream,
    ) -> Result<(), TcpRefusal> {
        let service_policies = match target {
            crate::inbound::Target::Service { service, .. } => Some(
                &self
                    .configured(&service.key())
                    .ok_or(TcpRefusal::NotConfigured)?
                    .compiled
                    .policies,
            ),
            crate::inbound::Target::Workload { .. } => None,
        };
        let attrs = authz::RequestAttributes::tcp(
            &downstream.identity,
            downstream.addr.ip(),
            downstream.dst,
        );
        let none = Policies::default();
        let verdict = authz::evaluate(
            &self.gateway_policies,
            service_policies.unwrap_or(&none),
            &attrs,
        );
        if verdict.allowed {
            Ok(())
        } else {
            Err(TcpRefusal::Denied(
                verdict
                    .policy
                    .unwrap_or("no ALLOW policy matched")
                    .to_string(),
            ))
        }
    }

    /// One endpoint for a TCP connection to `port` of `service` from a client in
    /// `client_namespace` (no hashing): on a TCP port, of a backend its TCPRoute draws by
    /// weight (the service itself without one); else of the service. The pick counts it in
    /// flight while held.
    pub fn endpoint(
        &self,
        service: &Service,
        port: u16,
        client_namespace: &str,
    ) -> Option<(Endpoint, Pick<EndpointKey>)> {
        let s = self.services.get(&service.key())?;
        let (to, to_port) = match s.table(port, client_namespace) {
            Some(table) if table.protocol() == pb::AppProtocol::Tcp => {
                let backend = table.routes().first()?.backends.choose(&mut rand::rng())?;
                let to = self.services.get(&*backend.target.service)?;
                (to.as_ref(), backend.target.port)
            }
            _ => (s.as_ref(), port),
        };
        let pick = to.balancer.pick(
            &http::HeaderMap::new(),
            None,
            Instant::now(),
            &mut rand::rng(),
        )?;
        Some((to.endpoint(&pick, to_port), pick))
    }
}

/// Why a passed-through TCP connection is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpRefusal {
    /// The addressed service's L7 configuration has not arrived (`NR`).
    NotConfigured,
    /// A policy denied it (the policy's name, or that no ALLOW policy matched).
    Denied(String),
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ambient_proto::istio::workload as wds;
    use proxy_core::state::{StateStore, Update};

    use super::*;

    const KEY: &str = "shop/web.shop.svc.cluster.local";
    const OTHER: &str = "shop/api.shop.svc.cluster.local";

    fn service(name: &str) -> wds::Address {
        wds::Address {
            r#type: Some(wds::address::Type::Service(wds::Service {
                name: name.into(),
                namespace: "shop".into(),
                hostname: format!("{name}.shop.svc.cluster.local"),
                ports: vec![wds::Port {
                    service_port: 80,
                    target_port: 8080,
                }],
                ..Default::default()
            })),
        }
    }

    fn pod(name: &str, last: u8, of: &str) -> wds::Address {
        wds::Address {
            r#type: Some(wds::address::Type::Workload(wds::Workload {
                uid: name.into(),
                name: name.into(),
                namespace: "shop".into(),
                addresses: vec![vec![10, 244, 0, last]],
                services: std::collections::BTreeMap::from([(
                    format!("shop/{of}.shop.svc.cluster.local"),
                    wds::PortList {
                        ports: vec![wds::Port {
                            service_port: 80,
                            target_port: 8080,
                        }],
                    },
                )]),
                ..Default::default()
            })),
        }
    }

    /// A route matching a regular expression, with a rate limit, and a port that does not
    /// compile (reported as a problem every time).
    fn service_config(name: &str, regex: &str) -> Arc<pb::ServiceConfig> {
        let route = pb::Route {
            name: format!("shop/{name}#0"),
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: Some(pb::path_match::Kind::Regex(regex.into())),
                }),
                ..Default::default()
            }],
            backends: vec![pb::Backend {
                service: format!("shop/{name}.shop.svc.cluster.local"),
                port: 80,
                weight: 1,
                filters: vec![],
            }],
            rate_limits: vec![pb::RateLimit {
                namespace: "shop".into(),
                name: "limit".into(),
                total: Some(pb::RateLimitRate {
                    requests_per_second: 10.0,
                    burst: 10,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let broken = pb::Route {
            name: format!("shop/{name}#1"),
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: Some(pb::path_match::Kind::Regex("(".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        Arc::new(pb::ServiceConfig {
            namespace: "shop".into(),
            name: name.into(),
            hostname: format!("{name}.shop.svc.cluster.local"),
            ports: vec![pb::PortConfig {
                port: 80,
                protocol: pb::AppProtocol::Http1 as i32,
                routes: vec![route, broken],
                consumer_routes: Vec::new(),
            }],
            ..Default::default()
        })
    }

    fn l7(web: Arc<pb::ServiceConfig>, api: Arc<pb::ServiceConfig>) -> L7Snapshot {
        L7Snapshot {
            services: HashMap::from([(KEY.to_string(), web), (OTHER.to_string(), api)]),
            gateways: HashMap::new(),
        }
    }

    fn sorted(mut errors: Vec<String>) -> Vec<String> {
        errors.sort();
        errors
    }

    fn endpoints_of(routing: &RoutingSnapshot, key: &str) -> Vec<String> {
        routing.services[key]
            .balancer
            .endpoints()
            .map(|e| e.key().0.uid.clone())
            .collect()
    }

    #[test]
    fn an_endpoint_change_keeps_what_was_compiled_and_a_config_change_recompiles_only_its_service()
    {
        let state = StateStore::new();
        state.apply(Update {
            upserts: vec![service("web"), service("api"), pod("web-1", 1, "web")],
            ..Default::default()
        });
        let config = l7(
            service_config("web", "/items/[0-9]+"),
            service_config("api", "/v[0-9]/.*"),
        );
        let routing = Routing::default();
        routing.rebuild("shop/waypoint", &config, &state.load());
        let first = routing.load();
        assert_eq!(first.errors.len(), 2, "{:?}", first.errors);
        assert_eq!(first.rate_limiters.all().count(), 2);

        // An endpoint joins web: nothing is compiled again, the endpoint is there, and the
        // problems and rate limiters (with their buckets) are all still in place.
        state.apply(Update {
            upserts: vec![pod("web-2", 2, "web")],
            ..Default::default()
        });
        routing.rebuild("shop/waypoint", &config, &state.load());
        let second = routing.load();
        for key in [KEY, OTHER] {
            assert!(Arc::ptr_eq(
                &first.services[key].compiled,
                &second.services[key].compiled
            ));
        }
        assert_eq!(endpoints_of(&first, KEY), ["web-1"]);
        assert_eq!(endpoints_of(&second, KEY), ["web-1", "web-2"]);
        assert_eq!(sorted(first.errors.clone()), sorted(second.errors.clone()));
        let limiters = |r: &RoutingSnapshot| {
            let mut all: Vec<_> = r.rate_limiters.all().map(Arc::as_ptr).collect();
            all.sort();
            all
        };
        assert_eq!(limiters(&first), limiters(&second));

        // An equal configuration pushed again (a new resource, same content) is kept too.
        let again = l7(
            Arc::new((*config.services[KEY]).clone()),
            config.services[OTHER].clone(),
        );
        routing.rebuild("shop/waypoint", &again, &state.load());
        let third = routing.load();
        assert!(Arc::ptr_eq(
            &first.services[KEY].compiled,
            &third.services[KEY].compiled
        ));

        // web's routes change: web is compiled again and routes by its new expression; api
        // is kept; the problems are those of a routing compiled from nothing.
        let changed = l7(
            service_config("web", "/orders/[a-z]+"),
            config.services[OTHER].clone(),
        );
        routing.rebuild("shop/waypoint", &changed, &state.load());
        let fourth = routing.load();
        assert!(!Arc::ptr_eq(
            &first.services[KEY].compiled,
            &fourth.services[KEY].compiled
        ));
        assert!(Arc::ptr_eq(
            &first.services[OTHER].compiled,
            &fourth.services[OTHER].compiled
        ));
        let get = |path: &str| {
            http::Request::get(path)
                .body(())
                .expect("valid")
                .into_parts()
                .0
        };
        let table = fourth.services[KEY].table(80, "shop").expect("port 80");
        assert!(table.select(&get("/orders/abc")).is_some());
        assert!(table.select(&get("/items/1")).is_none());
        let fresh = Routing::default();
        fresh.rebuild("shop/waypoint", &changed, &state.load());
        assert_eq!(
            sorted(fourth.errors.clone()),
            sorted(fresh.load().errors.clone())
        );
        assert_eq!(fourth.rate_limiters.all().count(), 2);
    }

    #[test]
    fn a_service_whose_ports_change_is_compiled_again() {
        let state = StateStore::new();
        state.apply(Update {
            upserts: vec![service("web"), service("api")],
            ..Default::default()
        });
        let config = l7(service_config("web", "/a"), service_config("api", "/b"));
        let routing = Routing::default();
        routing.rebuild("shop/waypoint", &config, &state.load());
        let first = routing.load();
        let Some(wds::address::Type::Service(mut web)) = service("web").r#type else {
            unreachable!()
        };
        web.ports.push(wds::Port {
            service_port: 81,
            target_port: 8081,
        });
        state.apply(Update {
            upserts: vec![wds::Address {
                r#type: Some(wds::address::Type::Service(web)),
            }],
            ..Default::default()
        });
        routing.rebuild("shop/waypoint", &config, &state.load());
        let second = routing.load();
        assert!(!Arc::ptr_eq(
            &first.services[KEY].compiled,
            &second.services[KEY].compiled
        ));
        assert!(second.services[KEY].table(81, "shop").is_some());
        assert!(Arc::ptr_eq(
            &first.services[OTHER].compiled,
            &second.services[OTHER].compiled
        ));
    }
}
