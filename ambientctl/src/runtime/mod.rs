//! The local runtime behind `ambientctl up`: a whole mesh on one Linux machine, no
//! Kubernetes and no root. Pods from a manifest directory run as network namespaces with
//! their containers' commands; the controller, a node agent and a ztunnel per node run as
//! processes; everything lives inside user, mount and network namespaces of its own.
//!
//! - [`home`]: the state directory that lets every command find the running mesh.
//! - [`supervisor`]: the process at the root of the mesh's namespaces.
//! - [`cluster`]: scheduling, addresses, enrolment and pod lifecycles.
//! - [`pod`]: a pod's containers as processes.
//! - [`control`]: the supervisor's API on a Unix socket.
//! - [`enter`]: joining a pod's namespaces from outside (`ambientctl exec`).
//! - [`generated`]: objects applied with the CLI, label overlays, and the runtime's view.
//! - [`waypoints`]: the ServiceAccount, Service and pod deployed for each waypoint Gateway.
//! - [`deployments`]: a Deployment's pods, as Kubernetes' controllers make them.
//! - [`kubelet`]: `up --kubernetes`, the same pods on a real API server (kube-lab).
//! - [`api_port`]: the host's port to that API server (for kubectl).
//! - [`scrape_port`]: the host's port for Prometheus (service discovery and metrics).

pub mod api_port;
pub mod cluster;
pub mod control;
pub mod deployments;
pub mod enter;
pub mod generated;
pub mod home;
pub mod kubelet;
pub mod pod;
pub mod scrape_port;
pub mod supervisor;
pub mod waypoints;
