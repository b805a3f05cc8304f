//! Reaching a Kubernetes cluster: the kubeconfig a command was given, or the usual one
//! (`$KUBECONFIG`, `~/.kube/config`, in-cluster); and `ambientctl kubeconfig`, the one of a
//! local mesh started with `up --kubernetes`.

use std::path::Path;
use std::process::ExitCode;

use crate::runtime::home::{Home, HomeError};

/// `ambientctl kubeconfig`: prints the path of the running local mesh's kubeconfig.
pub fn print_local() -> anyhow::Result<ExitCode> {
    let info = match Home::locate().running() {
        Ok(info) => info,
        Err(e @ HomeError::NotRunning) => {
            eprintln!("ambientctl: {e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    match info.kubeconfig {
        Some(path) => {
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "ambientctl: the running mesh has no API server; start one with \
                 `ambientctl up --kubernetes DIR`"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

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
