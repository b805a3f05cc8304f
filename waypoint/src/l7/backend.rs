//! Weighted backend choice for a route (Gateway API `backendRefs`): each request picks one
//! backend with probability weight / total; weight 0 is never chosen.

use std::sync::Arc;

use ambient_proto::ambient::waypoint::v1 as pb;
use rand::RngCore;

use super::filters::Filters;
use super::{Problem, below};

/// A service port to send to: the backend Service as `<namespace>/<hostname>` (the name of
/// its Address resource) and its service port. What the proxy resolves to endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendRef {
    pub service: Arc<str>,
    pub port: u16,
}

impl BackendRef {
    /// A backend needs a service and a port in 1..=65535.
    pub fn compile(b: &pb::Backend) -> Result<Self, Problem> {
        match u16::try_from(b.port) {
            Ok(port) if port != 0 && !b.service.is_empty() => Ok(BackendRef {
                service: b.service.as_str().into(),
                port,
            }),
            _ => Err(Problem::Backend(format!("{}:{}", b.service, b.port))),
        }
    }
}

/// A backend as a request uses it: where to send, and the filters applied only when it is
/// the one chosen (after the route's).
#[derive(Clone, Debug)]
pub struct Backend {
    pub target: BackendRef,
    pub filters: Filters,
}

#[derive(Clone, Debug)]
struct Entry {
    /// Cumulative weight up to and including this entry.
    end: u64,
    /// `None`: a backend that could not be compiled; its share of requests gets a 500, as
    /// Gateway API requires for invalid backend references.
    backend: Option<Backend>,
}

/// A route's backends with their weights, ready to be drawn from.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    entries: Box<[Entry]>,
    total: u64,
}

impl Backends {
    /// Compiles a route's backends. Invalid ones keep their weight (their requests get a 500)
    /// and are reported.
    pub fn compile(backends: &[pb::Backend]) -> (Self, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut entries = Vec::with_capacity(backends.len());
        let mut total = 0u64;
        for b in backends {
            let (filters, filter_problems) = Filters::compile(&b.filters);
            let mut valid = filter_problems.is_empty();
            problems.extend(filter_problems);
            if filters.has_redirect() {
                problems.push(Problem::BackendRedirect);
                valid = false;
            }
            let target = BackendRef::compile(b).map_err(|p| problems.push(p)).ok();
            if b.weight == 0 {
                continue;
            }
            total += u64::from(b.weight);
            entries.push(Entry {
                end: total,
                backend: target
                    .filter(|_| valid)
                    .map(|target| Backend { target, filters }),
            });
        }
        let backends = Backends {
            entries: entries.into(),
            total,
        };
        (backends, problems)
    }

    /// One backend taking every request (the default route to the service itself).
    pub fn single(target: BackendRef) -> Self {
        Backends {
            entries: Box::new([Entry {
                end: 1,
                backend: Some(Backend {
                    target,
                    filters: Filters::default(),
                }),
            }]),
            total: 1,
        }
    }

    /// Draws a backend by weight. `None`: answer 500 (no backend, all weights zero, or the
    /// drawn backend is invalid).
    pub fn choose(&self, rng: &mut (impl RngCore + ?Sized)) -> Option<&Backend> {
        match self.entries.len() {
            0 => None,
            1 => self.entries[0].backend.as_ref(),
            _ => {
                let r = below(rng, self.total);
                let i = self.entries.partition_point(|e| e.end <= r);
                self.entries[i].backend.as_ref()
            }
        }
    }

    /// The valid backends that can be chosen (weight > 0), e.g. to warm connections.
    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.entries.iter().filter_map(|e| e.backend.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn backend(service: &str, weight: u32) -> pb::Backend {
        pb::Backend {
            service: service.into(),
            port: 9080,
            weight,
            filters: vec![],
        }
    }

    fn counts(b: &Backends, n: usize) -> std::collections::HashMap<Option<String>, usize> {
        let mut rng = SmallRng::seed_from_u64(42);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..n {
            let key = b.choose(&mut rng).map(|b| b.target.service.to_string());
            *counts.entry(key).or_default() += 1;
        }
        counts
    }

    #[test]
    fn weights_70_30_within_binomial_tolerance() {
        let (b, problems) = Backends::compile(&[backend("ns/v1", 70), backend("ns/v2", 30)]);
        assert!(problems.is_empty());
        let n = 100_000;
        let c = counts(&b, n);
        let v1 = c[&Some("ns/v1".to_string())] as f64;
        // sd = sqrt(n p (1-p)) ≈ 144.9; allow 5 sd.
        let sd = (n as f64 * 0.7 * 0.3).sqrt();
        assert!((v1 - 70_000.0).abs() < 5.0 * sd, "{c:?}");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn zero_weights_never_chosen_all_zero_is_none() {
        let (b, _) = Backends::compile(&[
            backend("ns/v1", 0),
            backend("ns/v2", 1),
            backend("ns/v3", 0),
        ]);
        let c = counts(&b, 1_000);
        assert_eq!(c.len(), 1);
        assert_eq!(c[&Some("ns/v2".to_string())], 1_000);

        let (b, _) = Backends::compile(&[backend("ns/v1", 0), backend("ns/v2", 0)]);
        assert!(b.choose(&mut SmallRng::seed_from_u64(1)).is_none());
        let (b, _) = Backends::compile(&[]);
        assert!(b.choose(&mut SmallRng::seed_from_u64(1)).is_none());
    }

    #[test]
    fn invalid_backend_keeps_its_share_as_errors() {
        let mut bad = backend("", 50);
        bad.port = 0;
        let (b, problems) = Backends::compile(&[backend("ns/good", 50), bad]);
        assert_eq!(problems.len(), 1);
        let n = 20_000;
        let c = counts(&b, n);
        let none = c[&None] as f64;
        let sd = (n as f64 * 0.25).sqrt();
        assert!((none - 10_000.0).abs() < 5.0 * sd, "{c:?}");
        assert_eq!(b.iter().count(), 1);
    }
}
