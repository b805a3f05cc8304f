//! `PeerAuthentication` → the DENY authorizations ztunnel uses to refuse plaintext.
//!
//! A plaintext connection has no peer identity, so "deny when the principal is absent"
//! (`not_principals: [presence]`) is what STRICT means at L4. Mesh (root namespace, no
//! selector), namespace (no selector) and workload (selector) policies combine as in Istio:
//! the most specific non-UNSET mode wins, DISABLE acts as PERMISSIVE, and `portLevelMtls` is
//! honoured on workload policies only.

use std::collections::BTreeMap;

use ambient_proto::istio::security as sec;

use super::labels::selector_matches;
use crate::model::PeerAuthentication;
use crate::model::istio::MtlsMode;

/// The shared policy that refuses every connection without a peer identity.
pub const STATIC_STRICT: &str = "istio_converted_static_strict";
/// Prefix of per-policy conversions (for port-level settings).
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

fn deny_plaintext() -> sec::Match {
    sec::Match {
        not_principals: vec![super::authorization::string_match("*")],
        ..Default::default()
    }
}

pub fn static_strict(root_namespace: &str) -> sec::Authorization {
    sec::Authorization {
        name: STATIC_STRICT.into(),
        namespace: root_namespace.into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![deny_plaintext()],
            }],
        }],
    }
}

fn mode(pa: &PeerAuthentication) -> MtlsMode {
    pa.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default()
}

fn strict(m: MtlsMode) -> bool {
    m == MtlsMode::Strict
}

fn has_selector(pa: &PeerAuthentication) -> bool {
    pa.spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

/// Oldest first (by creation time, then name), as Istio picks among competing policies.
fn oldest(mut v: Vec<&PeerAuthentication>) -> Option<&PeerAuthentication> {
    v.sort_by(|a, b| {
        let t = |p: &PeerAuthentication| p.metadata.creation_timestamp.clone().map(|t| t.0);
        t(a).cmp(&t(b)).then(a.metadata.name.cmp(&b.metadata.name))
    });
    v.first().copied()
}

/// All PeerAuthentications, grouped for lookups.
pub struct PeerAuthIndex<'a> {
    root_namespace: String,
    by_namespace: BTreeMap<String, Vec<&'a PeerAuthentication>>,
    any: bool,
}

impl<'a> PeerAuthIndex<'a> {
    pub fn new(all: impl Iterator<Item = &'a PeerAuthentication>, root_namespace: &str) -> Self {
        let mut by_namespace: BTreeMap<String, Vec<&PeerAuthentication>> = BTreeMap::new();
        let mut any = false;
        for pa in all {
            any = true;
            let ns = pa
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            by_namespace.entry(ns).or_default().push(pa);
        }
        PeerAuthIndex {
            root_namespace: root_namespace.to_string(),
            by_namespace,
            any,
        }
    }

    /// Whether any PeerAuthentication exists (the static strict policy is published then).
    pub fn any(&self) -> bool {
        self.any
    }

    fn level(
        &self,
        ns: &str,
        pick: impl Fn(&PeerAuthentication) -> bool,
    ) -> Option<&'a PeerAuthentication> {
        oldest(
            self.by_namespace
                .get(ns)
                .into_iter()
                .flatten()
                .copied()
                .filter(|p| pick(p))
                .collect(),
        )
    }

    /// The mode a namespace inherits before workload policies.
    fn inherited(&self, ns: &str) -> MtlsMode {
        let mut m = MtlsMode::Permissive;
        if let Some(mesh) = self.level(&self.root_namespace, |p| !has_selector(p))
            && mode(mesh) != MtlsMode::Unset
        {
            m = mode(mesh);
        }
        if ns != self.root_namespace
            && let Some(nsp) = self.level(ns, |p| !has_selector(p))
            && mode(nsp) != MtlsMode::Unset
        {
            m = mode(nsp);
        }
        m
    }

    fn workload_policy(
        &self,
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&'a PeerAuthentication> {
        if ns == self.root_namespace {
            return None;
        }
        self.level(ns, |p| {
            p.spec.selector.as_ref().is_some_and(|s| {
                !s.match_labels.is_empty() && selector_matches(&s.match_labels, labels)
            })
        })
    }

    /// The authorization names (`ns/name`) a workload must list to get its mTLS mode.
    pub fn policies_for(&self, ns: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
        let inherited = self.inherited(ns);
        let Some(wl) = self.workload_policy(ns, labels) else {
            return if strict(inherited) {
                vec![format!("{}/{STATIC_STRICT}", self.root_namespace)]
            } else {
                vec![]
            };
        };
        let effective = match mode(wl) {
            MtlsMode::Unset => inherited,
            m => m,
        };
        match self.convert(wl, inherited) {
            Some(_) => vec![format!(
                "{ns}/{CONVERTED_PREFIX}{}",
                wl.metadata.name.clone().unwrap_or_default()
            )],
            None if strict(effective) => vec![format!("{}/{STATIC_STRICT}", self.root_namespace)],
            None => vec![],
        }
    }

    /// The per-policy authorization for a workload policy with port-level settings that
    /// differ from its mode; `None` when the static policy (or nothing) says it all.
    pub fn convert(
        &self,
        pa: &PeerAuthentication,
        inherited: MtlsMode,
    ) -> Option<sec::Authorization> {
        if !has_selector(pa) || pa.spec.port_level_mtls.is_empty() {
            return None;
        }
        let ns = pa
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let effective = match mode(pa) {
            MtlsMode::Unset => inherited,
            m => m,
        };
        let port_modes: Vec<(u32, MtlsMode)> = pa
            .spec
            .port_level_mtls
            .iter()
            .filter_map(|(p, m)| p.parse::<u16>().ok().map(|p| (u32::from(p), m.mode)))
            .collect();
        let rules = if strict(effective) {
            let exempt: Vec<u32> = port_modes
                .iter()
                .filter(|(_, m)| matches!(m, MtlsMode::Permissive | MtlsMode::Disable))
                .map(|(p, _)| *p)
                .collect();
            if exempt.is_empty() {
                return None;
            }
            vec![sec::Rule {
                clauses: vec![
                    sec::Clause {
                        matches: vec![deny_plaintext()],
                    },
                    sec::Clause {
                        matches: vec![sec::Match {
                            not_destination_ports: exempt,
                            ..Default::default()
                        }],
                    },
                ],
            }]
        } else {
            let strict_ports: Vec<u32> = port_modes
                .iter()
                .filter(|(_, m)| strict(*m))
                .map(|(p, _)| *p)
                .collect();
            if strict_ports.is_empty() {
                return None;
            }
            vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match {
                        destination_ports: strict_ports,
                        ..deny_plaintext()
                    }],
                }],
            }]
        };
        Some(sec::Authorization {
            name: format!(
                "{CONVERTED_PREFIX}{}",
                pa.metadata.name.clone().unwrap_or_default()
            ),
            namespace: ns,
            scope: sec::Scope::WorkloadSelector as i32,
            action: sec::Action::Deny as i32,
            rules,
        })
    }

    /// Every converted per-policy authorization.
    pub fn converted(&self) -> Vec<sec::Authorization> {
        self.by_namespace
            .iter()
            .flat_map(|(ns, list)| {
                let inherited = self.inherited(ns);
                list.iter()
                    .filter_map(move |pa| self.convert(pa, inherited))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pa(yaml: &str) -> PeerAuthentication {
        let document = crate::source::yaml::parse(yaml).unwrap().remove(0);
        serde_json::from_value(document.value).unwrap()
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_string(), app.to_string())].into()
    }

    #[test]
    fn inheritance_and_workload_overrides() {
        let all = [
            pa("metadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}"),
            pa("metadata: {name: relaxed, namespace: legacy}\nspec: {mtls: {mode: PERMISSIVE}}"),
            pa(
                "metadata: {name: web, namespace: legacy}\nspec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}",
            ),
        ];
        let idx = PeerAuthIndex::new(all.iter(), "istio-system");
        let strict = vec!["istio-system/istio_converted_static_strict".to_string()];
        assert_eq!(
            idx.policies_for("shop", &labels("x")),
            strict,
            "mesh-wide STRICT"
        );
        assert!(
            idx.policies_for("legacy", &labels("x")).is_empty(),
            "namespace PERMISSIVE"
        );
        assert_eq!(
            idx.policies_for("legacy", &labels("web")),
            strict,
            "workload STRICT"
        );
    }

    #[test]
    fn port_level_exceptions() {
        let all = [pa(
            "metadata: {name: web, namespace: shop}\nspec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {'9090': {mode: PERMISSIVE}}}",
        )];
        let idx = PeerAuthIndex::new(all.iter(), "istio-system");
        assert_eq!(
            idx.policies_for("shop", &labels("web")),
            vec!["shop/converted_peer_authentication_web"]
        );
        let c = &idx.converted()[0];
        assert_eq!(c.rules[0].clauses.len(), 2);
        assert_eq!(
            c.rules[0].clauses[1].matches[0].not_destination_ports,
            vec![9090]
        );

        let only_port = [pa(
            "metadata: {name: db, namespace: shop}\nspec: {selector: {matchLabels: {app: db}}, portLevelMtls: {'5432': {mode: STRICT}}}",
        )];
        let idx = PeerAuthIndex::new(only_port.iter(), "istio-system");
        let c = &idx.converted()[0];
        assert_eq!(
            c.rules[0].clauses[0].matches[0].destination_ports,
            vec![5432]
        );
        assert!(!c.rules[0].clauses[0].matches[0].not_principals.is_empty());
    }
}
