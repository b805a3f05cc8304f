//! The OCI images (`images/`, built without Docker) checked with the tools users have:
//! skopeo reads the layout, umoci unpacks it into a runtime bundle, and runc (a real OCI
//! runtime) boots the ztunnel image, which connects to a node agent over the ZDS socket
//! mounted into it (as in the DaemonSet) and answers readiness inside the container's own
//! network namespace.
//!
//! Runs as the machine's root, outside the lab sandbox: runc needs real cgroups. The container
//! gets a fresh network namespace with nothing but loopback, so nothing reaches any network.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ambient_lab::process::Proc;
use serde_json::{Value, json};
use ztunnel::inpod::netns::Netns;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("running {cmd:?}: {e} (installed? .ci/run installs it)"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A runc container, deleted (killed first) when dropped.
struct Container {
    id: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .output();
    }
}

/// `GET /healthz/ready` on 15021 inside network namespace `netns`.
fn readiness_in(netns: &Netns) -> Result<String, String> {
    netns
        .run(|| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect_timeout(
                &"127.0.0.1:15021".parse().unwrap(),
                Duration::from_secs(2),
            )?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(b"GET /healthz/ready HTTP/1.0\r\nHost: ztunnel\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

fn root_certificate() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn images_are_read_by_skopeo_and_umoci_and_the_ztunnel_image_boots_under_runc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bins = e2e::bin_dir();
    let tag = "e2e";
    let options = ambient_images::BuildOptions {
        bin_dir: bins.to_path_buf(),
        out: dir.path().join("oci"),
        tag: tag.into(),
        strip: true,
    };
    for name in ["ztunnel", "node-agent"] {
        let built = ambient_images::build(ambient_images::spec(name).unwrap(), &options)?;
        println!(
            "{}: {:.1} MB compressed, {:.1} MB unpacked",
            built.reference,
            built.compressed as f64 / 1e6,
            built.unpacked as f64 / 1e6
        );
    }
    let layout = options.out.display().to_string();

    // skopeo: the layout's images and their configuration.
    let inspected: Value = serde_json::from_str(&run(Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("oci:{layout}:ztunnel:{tag}"),
    ]))?)?;
    assert_eq!(inspected["config"]["User"], "65532:65532");
    assert_eq!(
        inspected["config"]["Entrypoint"],
        json!(["/usr/local/bin/ztunnel"])
    );
    assert_eq!(inspected["os"], "linux");
    let listed = run(Command::new("umoci").args(["ls", "--layout", &layout]))?;
    assert!(listed.contains(&format!("node-agent:{tag}")), "{listed}");

    // umoci: unpacked into a bundle, nothing but the program, its libraries and the user.
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{layout}:ztunnel:{tag}")])
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    assert!(rootfs.join("usr/local/bin/ztunnel").is_file());
    for absent in ["bin/sh", "usr/bin/sh", "bin/busybox", "usr/bin/apt"] {
        assert!(!rootfs.join(absent).exists(), "{absent} in the image");
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd"))?;
    assert!(passwd.contains("nonroot:x:65532:65532"), "{passwd}");

    // runc: as the DaemonSet runs it (root, its node capabilities), with the node agent's
    // socket directory and a local configuration mounted.
    let run_dir = dir.path().join("run");
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&run_dir)?;
    std::fs::create_dir_all(&etc)?;
    std::fs::write(etc.join("wds.yaml"), "workloads: []\n")?;
    std::fs::write(etc.join("root-cert.pem"), root_certificate())?;
    std::fs::write(etc.join("token"), "unused")?;
    let mut agent = Proc::spawn(
        "node-agent",
        &Netns::current()?,
        &bins.join("node-agent"),
        &[
            "--zds-socket".into(),
            run_dir.join("ztunnel.sock").display().to_string(),
            "--cni-socket".into(),
            run_dir.join("cni.sock").display().to_string(),
        ],
        &dir.path().join("node-agent.log"),
        &[],
    )?;
    let config_path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
    let process = &mut config["process"];
    process["terminal"] = json!(false);
    process["user"] = json!({"uid": 0, "gid": 1337});
    process["noNewPrivileges"] = json!(false);
    let caps = json!(["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_RAW"]);
    for set in ["bounding", "effective", "permitted"] {
        process["capabilities"][set] = caps.clone();
    }
    process["capabilities"]["ambient"] = json!([]);
    process["capabilities"]["inheritable"] = json!([]);
    let mut args = process["args"].as_array().cloned().unwrap_or_default();
    args.extend(
        [
            "--node-name",
            "node-a",
            "--config-file",
            "/etc/ambient/wds.yaml",
            "--zds-socket",
            "/var/run/ztunnel/ztunnel.sock",
            "--controller-address",
            "https://127.0.0.1:15012",
            "--ca-root",
            "/etc/ambient/root-cert.pem",
            "--token-file",
            "/etc/ambient/token",
        ]
        .map(|a| json!(a)),
    );
    process["args"] = json!(args);
    config["root"]["readonly"] = json!(true);
    let bind = |source: &Path, target: &str, mode: &str| {
        json!({"destination": target, "type": "bind", "source": source,
               "options": ["rbind", mode]})
    };
    let mounts = config["mounts"].as_array_mut().unwrap();
    mounts.push(bind(&run_dir, "/var/run/ztunnel", "rw"));
    mounts.push(bind(&etc, "/etc/ambient", "ro"));
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;

    let container = Container {
        id: format!("ambient-e2e-ztunnel-{}", std::process::id()),
    };
    let log = dir.path().join("ztunnel-container.log");
    let log_file = std::fs::File::create(&log)?;
    let status = Command::new("runc")
        .args(["run", "--detach", "--bundle"])
        .arg(&bundle)
        .arg(&container.id)
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()?;
    assert!(
        status.success(),
        "runc run: {}",
        std::fs::read_to_string(&log)?
    );
    let state: Value =
        serde_json::from_str(&run(Command::new("runc").args(["state", &container.id]))?)?;
    let pid = state["pid"].as_u64().ok_or("no pid in runc state")?;
    let netns = Netns::open(&PathBuf::from(format!("/proc/{pid}/ns/net")))?;
    assert!(
        !netns.same_as(&Netns::current()?),
        "the container has its own network namespace"
    );
    // Ready once it has its configuration and the agent's snapshot; the body names its pid,
    // which is 1 in the container's own pid namespace.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        match readiness_in(&netns) {
            Ok(a) if a.starts_with("HTTP/1.0 200") || a.starts_with("HTTP/1.1 200") => break a,
            other if std::time::Instant::now() > deadline => {
                return Err(format!(
                    "not ready: {other:?}\ncontainer log:\n{}\nagent log:\n{}",
                    std::fs::read_to_string(&log)?,
                    agent.log_tail(20)
                )
                .into());
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(answer.ends_with("ready\npid 1\n"), "{answer:?}");
    drop(container);
    agent.kill();
    Ok(())
}
