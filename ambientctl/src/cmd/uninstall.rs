//! `ambientctl uninstall`: removes from a cluster what `install` created, in the order that
//! lets the node agents restore each node's CNI configuration: the DaemonSet first, then,
//! once its pods are gone (each agent takes its plugin out of the node's chain as it exits,
//! seeing its DaemonSet deleted), everything else, the namespace last.
//!
//! Only objects carrying install's `app.kubernetes.io/part-of: ambient-rs` label are deleted:
//! CRDs that were there before install (the upstream bundles) stay. Waypoints the controller
//! deployed belong to the users' Gateways and go with them, as in Istio.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::Value;

use super::install::{self, InstallArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct UninstallArgs {
    /// Namespace install used (the controller's and the ztunnels').
    #[arg(short, long, default_value = "istio-system")]
    pub namespace: String,
    /// Kubeconfig of the cluster (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// How long to wait for the ztunnel pods to exit (their node agents restore the CNI
    /// configuration) before deleting the rest.
    #[arg(long, default_value_t = 120)]
    pub wait_seconds: u64,
}

pub fn run(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(uninstall(args))
}

async fn uninstall(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let config = match super::kubeconfig::load(args.kubeconfig.as_deref()).await {
        Ok(config) => config,
        Err(e) => {
            eprintln!(
                "error: no Kubernetes cluster configured ({e}). Point --kubeconfig or \
                 $KUBECONFIG at the cluster ambient-rs was installed in."
            );
            return Ok(ExitCode::from(1));
        }
    };
    let client = kube::Client::try_from(config).context("creating the Kubernetes client")?;
    let opts = InstallArgs {
        namespace: args.namespace.clone(),
        ..InstallArgs::default()
    };
    // Only kinds and names matter here (the CA it generates is thrown away).
    let mut objects = install::render(&opts)?;
    // The DaemonSet first; then the rest in reverse apply order (the namespace last).
    objects.reverse();
    objects.sort_by_key(|o| o["kind"] != "DaemonSet");
    for object in &objects {
        delete(&client, object, &args.namespace).await?;
        if object["kind"] == "DaemonSet" {
            wait_for_pods_gone(&client, object, &args.namespace, args.wait_seconds).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn delete(client: &kube::Client, object: &Value, namespace: &str) -> anyhow::Result<()> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let shown = format!("{}/{name}", kind.to_lowercase());
    let api = install::api_for(client, object, namespace)?;
    let Some(found) = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading {shown}"))?
    else {
        println!("{shown} not found");
        return Ok(());
    };
    let (label, value) = install::part_of();
    if found.metadata.labels.as_ref().and_then(|l| l.get(label)) != Some(&value.to_string()) {
        println!("{shown} kept (not created by install)");
        return Ok(());
    }
    api.delete(name, &DeleteParams::background())
        .await
        .with_context(|| format!("deleting {shown}"))?;
    println!("{shown} deleted");
    Ok(())
}

/// Waits until no pod of the DaemonSet is left (its selector's pods in its namespace).
async fn wait_for_pods_gone(
    client: &kube::Client,
    daemonset: &Value,
    namespace: &str,
    seconds: u64,
) -> anyhow::Result<()> {
    let selector = daemonset["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let left = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .context("listing the ztunnel pods")?
            .items
            .len();
        if left == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "warning: {left} ztunnel pod(s) still terminating after {seconds}s; nodes whose \
                 agent has not exited keep ambient-cni in their CNI configuration until it does"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
