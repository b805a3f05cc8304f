//! `ambientctl prometheus-config`: a Prometheus configuration that scrapes the mesh. For the
//! local mesh it points Prometheus' HTTP service discovery at the mesh's scrape port
//! ([`crate::runtime::scrape_port`]); with `--kubernetes`, the usual annotation-driven pod job.

use std::time::Duration;

use anyhow::Context;

use super::dashboard::parse_duration;
use crate::runtime::home::Home;

#[derive(Debug, clap::Args)]
pub struct PrometheusArgs {
    /// How often Prometheus scrapes each proxy (`15s`, `500ms`, `1m`).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub scrape_interval: Duration,
    /// How often it asks the mesh which proxies exist.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub refresh_interval: Duration,
    /// The job for a Prometheus running in a Kubernetes cluster (pod discovery and the
    /// `prometheus.io/*` annotations every proxy carries) instead of the local mesh's.
    #[arg(long)]
    pub kubernetes: bool,
}

/// Prometheus' own duration syntax.
fn prom_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The configuration for the local mesh whose scrape port is `scrape`.
pub fn local_config(scrape: std::net::SocketAddr, args: &PrometheusArgs) -> String {
    let scrape_interval = prom_duration(args.scrape_interval);
    let refresh = prom_duration(args.refresh_interval);
    format!(
        "# Prometheus configuration for the ambient-rs local mesh (ambientctl prometheus-config).\n\
         # Targets come from the mesh's scrape port on this host's loopback and follow the\n\
         # mesh as proxies come and go.\n\
         global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n\
         scrape_configs:\n\
         - job_name: ambient-rs\n  \
           http_sd_configs:\n  \
           - url: http://{scrape}/targets\n    \
             refresh_interval: {refresh}\n"
    )
}

/// The pod job for a Prometheus inside a cluster.
pub fn kubernetes_config(args: &PrometheusArgs) -> String {
    let scrape_interval = prom_duration(args.scrape_interval);
    format!(
        "# Prometheus configuration for ambient-rs on Kubernetes (ambientctl prometheus-config\n\
         # --kubernetes): every pod annotated prometheus.io/scrape=\"true\", at its\n\
         # prometheus.io/port and prometheus.io/path (ztunnel, waypoints, the controller).\n\
         global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n\
         scrape_configs:\n\
         - job_name: kubernetes-pods\n  \
           kubernetes_sd_configs:\n  \
           - role: pod\n  \
           relabel_configs:\n  \
           - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]\n    \
             action: keep\n    \
             regex: \"true\"\n  \
           - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]\n    \
             action: replace\n    \
             target_label: __metrics_path__\n    \
             regex: (.+)\n  \
           - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]\n    \
             action: replace\n    \
             regex: '([^:]+)(?::\\d+)?;(\\d+)'\n    \
             replacement: '$1:$2'\n    \
             target_label: __address__\n  \
           - source_labels: [__meta_kubernetes_namespace]\n    \
             target_label: namespace\n  \
           - source_labels: [__meta_kubernetes_pod_name]\n    \
             target_label: pod\n"
    )
}

/// `ambientctl prometheus-config`.
pub fn run(args: PrometheusArgs) -> anyhow::Result<()> {
    if args.kubernetes {
        print!("{}", kubernetes_config(&args));
        return Ok(());
    }
    let home = Home::locate();
    let info = home.info().context("reading the running mesh")?;
    let scrape = info.scrape_address.context(
        "the running mesh has no scrape port (started by an older ambientctl?); restart it",
    )?;
    print!("{}", local_config(scrape, &args));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(scrape: &str, refresh: &str) -> PrometheusArgs {
        PrometheusArgs {
            scrape_interval: parse_duration(scrape).unwrap(),
            refresh_interval: parse_duration(refresh).unwrap(),
            kubernetes: false,
        }
    }

    #[test]
    fn durations_in_prometheus_syntax() {
        assert_eq!(prom_duration(parse_duration("15s").unwrap()), "15s");
        assert_eq!(prom_duration(parse_duration("120").unwrap()), "2m");
        assert_eq!(prom_duration(parse_duration("1500ms").unwrap()), "1500ms");
    }

    #[test]
    fn configurations_are_yaml_prometheus_reads() {
        let local = local_config("127.0.0.1:4100".parse().unwrap(), &args("1s", "2s"));
        let v: serde_json::Value = serde_saphyr::from_str(&local).unwrap();
        assert_eq!(v["global"]["scrape_interval"], "1s");
        let job = &v["scrape_configs"][0];
        assert_eq!(job["job_name"], "ambient-rs");
        assert_eq!(
            job["http_sd_configs"][0]["url"],
            "http://127.0.0.1:4100/targets"
        );
        assert_eq!(job["http_sd_configs"][0]["refresh_interval"], "2s");

        let kube: serde_json::Value =
            serde_saphyr::from_str(&kubernetes_config(&args("15s", "5s"))).unwrap();
        let relabel = &kube["scrape_configs"][0]["relabel_configs"];
        assert_eq!(relabel[0]["regex"], "true");
        assert_eq!(relabel[2]["regex"], "([^:]+)(?::\\d+)?;(\\d+)");
        assert_eq!(relabel[2]["replacement"], "$1:$2");
    }
}
