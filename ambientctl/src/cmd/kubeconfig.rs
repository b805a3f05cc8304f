//! Reaching a Kubernetes cluster: the kubeconfig a command was given, or the usual one
//! (`$KUBECONFIG`, `~/.kube/config`, in-cluster).

use std::path::Path;

/// The client configuration of `path`, or the inferred one when `None`; errors name the file.
pub async fn load(path: Option<&Path>) -> Result<kube::Config, String> {
    match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| format!("{}: {e}", path.display()))
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    }
}
