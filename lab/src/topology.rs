//! The simulated cluster network, built inside the sandbox's own network namespace:
//!
//! ```text
//!  sandbox netns (the "underlay"): bridge ambient0 172.30.0.1/16 — controller lives here
//!   ├─ vn0 ══ eth0 172.30.0.10  node netns "node-a": bridge cni0 10.244.1.1/24, forwarding
//!   │                              ├─ vp0 ══ eth0 10.244.1.2  pod netns
//!   │                              └─ ...
//!   ├─ vn1 ══ eth0 172.30.0.11  node netns "node-b": cni0 10.244.2.1/24 ...
//!   └─ vx0 ══ eth0 172.30.1.1   an "external" host, outside the mesh
//! ```
//!
//! Each node routes the other nodes' pod ranges via their underlay address. Nothing has a
//! route out of the sandbox: it has no link to the host.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ztunnel::inpod::netns::Netns;

use super::netns::{self, NetnsError};
use ztunnel::agent::rtnl::{Rtnl, RtnlError};

/// The underlay's bridge and its address (where the controller listens).
pub const UNDERLAY_BRIDGE: &str = "ambient0";
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const UNDERLAY_PREFIX: u8 = 16;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Rtnl(#[from] RtnlError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("refusing to build the lab: {0}")]
    NotContained(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub index: u8,
    pub netns: Arc<Netns>,
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    /// Pods get addresses from 10.244.<index+1>.0/24.
    pub pod_subnet: Ipv4Addr,
    next_pod: u8,
    /// Host numbers of removed pods, reused first.
    free: Vec<u8>,
}

#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: Arc<Netns>,
    pub netns_path: PathBuf,
    /// The node's end of the pod's veth pair.
    veth: String,
}

#[derive(Debug)]
pub struct External {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: Arc<Netns>,
}

/// The network of a local mesh: nodes, pods and outside hosts in their own namespaces.
pub struct Lab {
    pub run_dir: PathBuf,
    netns_dir: PathBuf,
    /// The underlay namespace (the sandbox's own).
    pub underlay: Arc<Netns>,
    pub nodes: BTreeMap<String, Node>,
    pub pods: BTreeMap<String, Pod>,
    pub externals: BTreeMap<String, External>,
    veths: u32,
    /// First two octets of the pods' /16 (each node gets a /24 of it).
    pod_prefix: [u8; 2],
}

impl Lab {
    /// Sets up the underlay in the current namespace, which must be an empty one (the
    /// sandbox's): a namespace that already has links could route mesh addresses to a real
    /// network, so it is refused.
    pub fn new(run_dir: &Path) -> Result<Self, TopologyError> {
        let mut rtnl = Rtnl::open()?;
        let foreign: Vec<String> = rtnl
            .links()?
            .into_iter()
            .filter(|l| l.name != "lo")
            .map(|l| l.name)
            .collect();
        if !foreign.is_empty() {
            return Err(TopologyError::NotContained(format!(
                "this network namespace already has links ({}); mesh addresses could leave through them. Run inside the sandbox (ambientctl creates it).",
                foreign.join(", ")
            )));
        }
        let netns_dir = run_dir.join("netns");
        std::fs::create_dir_all(&netns_dir)?;
        rtnl.set_up("lo", None)?;
        rtnl.add_bridge(UNDERLAY_BRIDGE)?;
        rtnl.add_address(
            UNDERLAY_BRIDGE,
            IpAddr::V4(UNDERLAY_GATEWAY),
            UNDERLAY_PREFIX,
        )?;
        rtnl.set_up(UNDERLAY_BRIDGE, None)?;
        Ok(Lab {
            run_dir: run_dir.to_path_buf(),
            netns_dir,
            underlay: Arc::new(Netns::current()?),
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            externals: BTreeMap::new(),
            veths: 0,
            pod_prefix: [10, 244],
        })
    }

    /// Pods' addresses come from `a.b.0.0/16` (default 10.244.0.0/16); set before adding
    /// nodes.
    pub fn set_pod_prefix(&mut self, a: u8, b: u8) -> Result<(), TopologyError> {
        if !self.nodes.is_empty() {
            return Err(TopologyError::Invalid(
                "the pod range must be set before nodes are added".into(),
            ));
        }
        self.pod_prefix = [a, b];
        Ok(())
    }

    fn next_veth(&mut self, prefix: &str) -> String {
        self.veths += 1;
        format!("{prefix}{}", self.veths)
    }

    /// Attaches a new namespace to the underlay at `ip`.
    fn attach_to_underlay(
        &mut self,
        ns: &Netns,
        ip: Ipv4Addr,
        prefix: &str,
    ) -> Result<(), TopologyError> {
        let host_side = self.next_veth(prefix);
        let mut here = Rtnl::open()?;
        here.add_veth(&host_side, "eth0", Some(ns))?;
        here.set_up(&host_side, Some(UNDERLAY_BRIDGE))?;
        let mut there = Rtnl::open_in(ns)?;
        there.add_address("eth0", IpAddr::V4(ip), UNDERLAY_PREFIX)?;
        there.set_up("eth0", None)?;
        Ok(())
    }

    /// Adds a node: its namespace, its underlay address and a bridge for its pods.
    pub fn add_node(&mut self, name: &str) -> Result<&Node, TopologyError> {
        if self.nodes.contains_key(name) {
            return Err(TopologyError::Invalid(format!("node {name} exists")));
        }
        let index = u8::try_from(self.nodes.len())
            .map_err(|_| TopologyError::Invalid("too many nodes".into()))?;
        if index >= 200 {
            return Err(TopologyError::Invalid("too many nodes".into()));
        }
        let path = self.netns_dir.join(name);
        let ns = Arc::new(netns::create(&path)?);
        let ip = Ipv4Addr::new(172, 30, 0, 10 + index);
        self.attach_to_underlay(&ns, ip, "vn")?;
        let [a, b] = self.pod_prefix;
        let pod_subnet = Ipv4Addr::new(a, b, index + 1, 0);
        let gateway = Ipv4Addr::new(a, b, index + 1, 1);
        let mut rtnl = Rtnl::open_in(&ns)?;
        rtnl.add_bridge("cni0")?;
        rtnl.add_address("cni0", IpAddr::V4(gateway), 24)?;
        rtnl.set_up("cni0", None)?;
        netns::enable_forwarding(&ns)?;
        // Routes between this node's pods and every other node's.
        for other in self.nodes.values() {
            rtnl.add_route(other.pod_subnet, 24, Some(other.ip), None)?;
            Rtnl::open_in(&other.netns)?.add_route(pod_subnet, 24, Some(ip), None)?;
        }
        for ext in self.externals.values() {
            Rtnl::open_in(&ext.netns)?.add_route(pod_subnet, 24, Some(ip), None)?;
        }
        self.nodes.insert(
            name.to_string(),
            Node {
                name: name.to_string(),
                index,
                netns: ns,
                netns_path: path,
                ip,
                pod_subnet,
                next_pod: 2,
                free: Vec::new(),
            },
        );
        Ok(&self.nodes[name])
    }

    /// Adds a pod on `node`: its namespace, an address from the node's range, and a default
    /// route via the node.
    pub fn add_pod(
        &mut self,
        namespace: &str,
        name: &str,
        node: &str,
    ) -> Result<&Pod, TopologyError> {
        let key = format!("{namespace}/{name}");
        if self.pods.contains_key(&key) {
            return Err(TopologyError::Invalid(format!("pod {key} exists")));
        }
        let host_side = self.next_veth("vp");
        let n = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| TopologyError::Invalid(format!("no node {node}")))?;
        let host = match n.free.pop() {
            Some(h) => h,
            None if n.next_pod == 255 => {
                return Err(TopologyError::Invalid(format!("node {node} is full")));
            }
            None => {
                n.next_pod += 1;
                n.next_pod - 1
            }
        };
        let octets = n.pod_subnet.octets();
        let ip = Ipv4Addr::new(octets[0], octets[1], octets[2], host);
        let gateway = Ipv4Addr::new(octets[0], octets[1], octets[2], 1);
        let path = self.netns_dir.join(format!("pod-{namespace}-{name}"));
        let ns = Arc::new(netns::create(&path)?);
        let mut on_node = Rtnl::open_in(&n.netns)?;
        on_node.add_veth(&host_side, "eth0", Some(&ns))?;
        on_node.set_up(&host_side, Some("cni0"))?;
        let mut in_pod = Rtnl::open_in(&ns)?;
        in_pod.add_address("eth0", IpAddr::V4(ip), 24)?;
        in_pod.set_up("eth0", None)?;
        in_pod.add_route(Ipv4Addr::UNSPECIFIED, 0, Some(gateway), None)?;
        self.pods.insert(
            key.clone(),
            Pod {
                name: name.to_string(),
                namespace: namespace.to_string(),
                node: node.to_string(),
                ip,
                netns: ns,
                netns_path: path,
                veth: host_side,
            },
        );
        Ok(&self.pods[&key])
    }

    /// Removes a pod: its link, its namespace's mount point, and frees its address. The
    /// namespace itself goes once nothing else holds it.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Result<(), TopologyError> {
        let key = format!("{namespace}/{name}");
        let pod = self
            .pods
            .remove(&key)
            .ok_or_else(|| TopologyError::Invalid(format!("no pod {key}")))?;
        if let Some(node) = self.nodes.get_mut(&pod.node) {
            match Rtnl::open_in(&node.netns)?.delete_link(&pod.veth) {
                Ok(()) | Err(RtnlError::NoLink(_)) => {}
                Err(e) => return Err(e.into()),
            }
            node.free.push(pod.ip.octets()[3]);
        }
        netns::remove(&pod.netns_path)?;
        Ok(())
    }

    /// Adds a host on the underlay that is not part of the mesh.
    pub fn add_external(&mut self, name: &str) -> Result<&External, TopologyError> {
        let index = u8::try_from(self.externals.len() + 1)
            .map_err(|_| TopologyError::Invalid("too many hosts".into()))?;
        let path = self.netns_dir.join(format!("ext-{name}"));
        let ns = Arc::new(netns::create(&path)?);
        let ip = Ipv4Addr::new(172, 30, 1, index);
        self.attach_to_underlay(&ns, ip, "vx")?;
        // Replies to pods go back via the pods' nodes.
        let mut rtnl = Rtnl::open_in(&ns)?;
        for node in self.nodes.values() {
            rtnl.add_route(node.pod_subnet, 24, Some(node.ip), None)?;
        }
        self.externals.insert(
            name.to_string(),
            External {
                name: name.to_string(),
                ip,
                netns: ns,
            },
        );
        Ok(&self.externals[name])
    }

    /// Routes every node's pod range from the underlay via its node, so that pods reach the
    /// controller there (waypoints do, as ztunnels do from the nodes). Call after the last
    /// [`Lab::add_node`].
    pub fn route_pods_from_underlay(&self) -> Result<(), TopologyError> {
        let mut rtnl = Rtnl::open_in(&self.underlay)?;
        for n in self.nodes.values() {
            rtnl.add_route(n.pod_subnet, 24, Some(n.ip), None)?;
        }
        Ok(())
    }

    pub fn pod(&self, namespace: &str, name: &str) -> &Pod {
        &self.pods[&format!("{namespace}/{name}")]
    }

    pub fn node(&self, name: &str) -> &Node {
        &self.nodes[name]
    }
}
