//! The Helm chart (`charts/ambient-rs`) with Helm itself (built from its Go module by
//! `tools/build.sh helm`): `helm lint`; `helm template` renders exactly the objects
//! `ambientctl install` applies (same CA, defaults), and the values reach their fields; and
//! `helm install` / `helm uninstall` against a real API server (kube-lab).

#![forbid(unsafe_code)]

mod common;
mod kube_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ambient_lab::kube::{KubeLab, KubeLabOptions, tools_dir};
use ambient_lab::sandbox::run_test;
use kube_common::*;
use serde_json::Value;

fn helm() -> Command {
    let exe = tools_dir().join("bin/helm");
    assert!(
        exe.is_file(),
        "helm not found at {} (tools/build.sh builds it)",
        exe.display()
    );
    Command::new(exe)
}

fn chart() -> PathBuf {
    e2e::workspace().join("charts/ambient-rs")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `--set-file` arguments giving the chart the CA in `dir`.
fn ca_values(dir: &Path) -> Vec<String> {
    [
        ("ca.rootCert", "root-cert.pem"),
        ("ca.cert", "ca-cert.pem"),
        ("ca.key", "ca-key.pem"),
    ]
    .iter()
    .flat_map(|(value, file)| {
        [
            "--set-file".to_string(),
            format!("{value}={}", dir.join(file).display()),
        ]
    })
    .collect()
}

/// Objects by (kind, name).
fn by_name(objects: Vec<Value>) -> Vec<((String, String), Value)> {
    let mut out: Vec<_> = objects
        .into_iter()
        .map(|o| {
            let k = (
                o["kind"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            (k, o)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn template(extra: &[&str], ca: &Path) -> Vec<Value> {
    let yaml = run(helm()
        .args(["template", "ambient-rs"])
        .arg(chart())
        .args(["--namespace", "istio-system", "--include-crds"])
        .args(ca_values(ca))
        .args(extra));
    ambient_controller::source::yaml::parse(&yaml)
        .expect("helm template prints YAML")
        .into_iter()
        .map(|d| d.value)
        .collect()
}

fn install_dry_run(extra: &[&str], ca: &Path) -> Vec<Value> {
    let json = run(Command::new(e2e::EXE)
        .args(["install", "--dry-run", "-o", "json", "--ca-dir"])
        .arg(ca)
        .args(extra));
    let list: Value = serde_json::from_str(&json).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn ca_dir(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    run(Command::new(e2e::EXE).args(["ca", "create"]).arg(&ca));
    ca
}

#[test]
fn helm_lint_passes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_dir(dir.path());
    let out = run(helm().arg("lint").arg(chart()).args(ca_values(&ca)));
    assert!(out.contains("0 chart(s) failed"), "{out}");
    // Without a CA the chart refuses to render, saying how to make one.
    let out = helm()
        .args(["template", "x"])
        .arg(chart())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ambientctl ca create"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn helm_template_renders_what_install_applies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_dir(dir.path());
    let helm = by_name(template(&["--set", "createNamespace=true"], &ca));
    let install = by_name(install_dry_run(&[], &ca));
    let names =
        |v: &[((String, String), Value)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(names(&helm), names(&install));
    for ((key, h), (_, i)) in helm.iter().zip(&install) {
        assert_eq!(h, i, "{key:?} differs");
    }

    // The same options through both, and the chart's own values.
    let helm = by_name(template(
        &[
            "--set",
            "hub=registry.example/x,tag=v9,trustDomain=example.org,logLevel=debug,logFormat=json",
            "--set",
            "ztunnel.nodeSelector.kubernetes\\.io/os=linux",
            "--set",
            "controller.resources.limits.memory=256Mi",
            "--set",
            "otlp.endpoint=http://jaeger.observability:4318,otlp.protocol=http/protobuf",
        ],
        &ca,
    ));
    let install = by_name(install_dry_run(
        &[
            "--image-hub",
            "registry.example/x",
            "--tag",
            "v9",
            "--trust-domain",
            "example.org",
            "--log-level",
            "debug",
            "--otlp-endpoint",
            "http://jaeger.observability:4318",
            "--otlp-protocol",
            "http/protobuf",
        ],
        &ca,
    ));
    let find = |v: &[((String, String), Value)], kind: &str, name: &str| {
        v.iter()
            .find(|(k, _)| k.0 == kind && k.1 == name)
            .map(|(_, o)| o.clone())
            .unwrap()
    };
    let ds = find(&helm, "DaemonSet", "ztunnel");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(
        pod["containers"][1]["image"],
        "registry.example/x/node-agent:v9"
    );
    let install_ds = find(&install, "DaemonSet", "ztunnel");
    for c in 0..2 {
        let (h, i) = (
            &pod["containers"][c],
            &install_ds["spec"]["template"]["spec"]["containers"][c],
        );
        assert_eq!(h["image"], i["image"]);
        assert_eq!(h["env"], i["env"], "RUST_LOG on container {c}");
    }
    // OTLP export: the same flags through both (the rest of the ztunnel's arguments differ
    // only by --log-format, which install leaves at text).
    let args_but_log_format = |c: &Value| {
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .filter(|a| a != "json" && a != "text")
            .collect::<Vec<_>>()
    };
    assert_eq!(
        args_but_log_format(&pod["containers"][0]),
        args_but_log_format(&install_ds["spec"]["template"]["spec"]["containers"][0])
    );
    let args = pod["containers"][0]["args"].as_array().unwrap();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--log-format" && w[1] == "json")
    );
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--trust-domain" && w[1] == "example.org")
    );
    let controller = find(&helm, "Deployment", "ambient-controller");
    let container = &controller["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
    let install_controller = find(&install, "Deployment", "ambient-controller");
    assert_eq!(
        args_but_log_format(container),
        args_but_log_format(&install_controller["spec"]["template"]["spec"]["containers"][0]),
        "the controller's arguments, --waypoint-otlp-* included"
    );
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .windows(2)
            .any(|w| w[0] == "--waypoint-otlp-endpoint"
                && w[1] == "http://jaeger.observability:4318")
    );
    assert_eq!(
        container["env"],
        find(&install, "Deployment", "ambient-controller")["spec"]["template"]["spec"]["containers"]
            [0]["env"]
    );
}

#[test]
fn helm_installs_and_uninstalls_on_a_real_api_server() {
    run_test(
        "helm_installs_and_uninstalls_on_a_real_api_server",
        |dir| async move {
            ztunnel::agent::rtnl::Rtnl::open()?.set_up("lo", None)?;
            let kube = KubeLab::start(&dir, KubeLabOptions::default()).await?;
            let kubeconfig = kube.kubeconfig().display().to_string();
            let ca = ca_dir(&dir);
            // Helm keeps its caches and state under HOME; the sandbox's scratch directory.
            let helm = || {
                let mut cmd = helm();
                cmd.env("HOME", &dir)
                    .env("XDG_CACHE_HOME", dir.join("cache"))
                    .env("XDG_CONFIG_HOME", dir.join("config"))
                    .env("XDG_DATA_HOME", dir.join("data"));
                cmd
            };
            let out = run(helm()
                .args(["install", "ambient-rs"])
                .arg(chart())
                .args(["--namespace", "istio-system", "--create-namespace"])
                .args(["--kubeconfig", &kubeconfig])
                .args(ca_values(&ca)));
            assert!(out.contains("STATUS: deployed"), "{out}");
            let rendered = template(&[], &ca);
            for want in &rendered {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                let found = kube
                    .get(
                        &s(&want["apiVersion"]),
                        &s(&want["kind"]),
                        &s(&want["metadata"]["namespace"]),
                        &s(&want["metadata"]["name"]),
                    )
                    .await?;
                assert!(
                    found.is_some(),
                    "{} {} not applied",
                    want["kind"],
                    want["metadata"]["name"]
                );
            }
            let out = run(helm()
                .args(["uninstall", "ambient-rs", "--namespace", "istio-system"])
                .args(["--kubeconfig", &kubeconfig]));
            assert!(out.contains("uninstalled"), "{out}");
            // Everything but the CRDs is gone (Helm never deletes a chart's crds/).
            for want in rendered
                .iter()
                .filter(|o| o["kind"] != "CustomResourceDefinition")
            {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                kube.wait_for(
                    (&s(&want["apiVersion"]), &s(&want["kind"])),
                    &s(&want["metadata"]["namespace"]),
                    &s(&want["metadata"]["name"]),
                    std::time::Duration::from_secs(60),
                    |o| o.is_none(),
                )
                .await?;
            }
            TestResult::Ok(())
        },
    );
}
