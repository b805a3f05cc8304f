//! Driving the built `ambientctl` as a user does, for end-to-end tests of the local runtime.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use e2e::EXE;

/// `demo-app` next to `ambientctl` (where the runtime looks first): built with it.
pub fn ensure_demo_app() {
    assert!(e2e::bin_dir().join("demo-app").exists());
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Shows a command and what it printed (in the test's output, kept when it fails).
pub fn show(program: &str, args: &[&str], out: &Output) {
    eprintln!(
        "$ {program} {}\n-> {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One mesh home; a mesh still running when this is dropped is taken down.
pub struct Ctl {
    pub home: PathBuf,
}

impl Ctl {
    pub fn new(scratch: &Path) -> Ctl {
        Ctl {
            home: scratch.join("home"),
        }
    }

    /// A two-node mesh brought up (`up --detach`) on a copy of tests/fixtures/`fixture`, in
    /// `scratch`; the copy's path (tests edit it to change the mesh).
    pub fn up_fixture(scratch: &Path, fixture: &str) -> (Ctl, PathBuf) {
        Ctl::up_fixture_with(scratch, fixture, |_| {})
    }

    /// Like [`Ctl::up_fixture`], with `prepare` adding to the copy before the mesh starts.
    pub fn up_fixture_with(
        scratch: &Path,
        fixture: &str,
        prepare: impl FnOnce(&Path),
    ) -> (Ctl, PathBuf) {
        ensure_demo_app();
        let ctl = Ctl::new(scratch);
        let dir = scratch.join("mesh");
        e2e::copy_dir(&workspace().join("tests/fixtures").join(fixture), &dir);
        prepare(&dir);
        ctl.ok(&["up", dir.to_str().unwrap(), "--detach", "--nodes", "2"]);
        (ctl, dir)
    }

    /// `demo-app get URL --summary EXTRA...` run in pod `namespace/pod`: the summary's JSON.
    pub fn get_summary(
        &self,
        namespace: &str,
        pod: &str,
        url: &str,
        extra: &[&str],
    ) -> serde_json::Value {
        let mut args = vec![
            "exec",
            "-n",
            namespace,
            pod,
            "--",
            "demo-app",
            "get",
            url,
            "--summary",
        ];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let line = out.lines().last().expect("a summary line");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
    }

    /// One `demo-app get URL` from pod `namespace/pod` to an echo server: its JSON answer.
    pub fn get_echo(&self, namespace: &str, pod: &str, url: &str) -> serde_json::Value {
        let out = self.ok(&["exec", "-n", namespace, pod, "--", "demo-app", "get", url]);
        let line = out.lines().last().expect("an answer");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("echo answer {line:?}: {e}"))
    }

    /// The workload `namespace/<name>` as ztunnels know it, for the first name `pick` accepts.
    pub fn workload(&self, namespace: &str, pick: impl Fn(&str) -> bool) -> serde_json::Value {
        let workloads = self.json(&["ztunnel-config", "workloads", "-o", "json"]);
        workloads
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["namespace"] == namespace)
            .find(|w| w["name"].as_str().is_some_and(&pick))
            .cloned()
            .unwrap_or_else(|| panic!("no such workload in {namespace}: {workloads}"))
    }

    /// The name of the (first) waypoint pod of `namespace`.
    pub fn waypoint_pod(&self, namespace: &str) -> String {
        self.workload(namespace, |n| n.starts_with("waypoint"))["name"]
            .as_str()
            .expect("a name")
            .to_string()
    }

    /// `/metrics` of the (first) waypoint pod of `namespace`, through the control socket.
    pub fn waypoint_metrics(&self, namespace: &str) -> String {
        let name = self.waypoint_pod(namespace);
        let (code, body) = self.control_get(&format!("/pod/{namespace}/{name}/15020/metrics"));
        assert_eq!(code, 200, "{body}");
        body
    }

    /// ambientctl on this home, kept away from any real cluster the machine knows.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(EXE);
        command
            .args(args)
            .env("AMBIENT_HOME", &self.home)
            .env("KUBECONFIG", self.home.join("no-such-kubeconfig"))
            .env("HOME", &self.home)
            // Where tools/build.sh put kube-lab and the CRD modules (under the real HOME).
            .env("AMBIENT_TOOLS_DIR", ambient_lab::kube::tools_dir())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT");
        command
    }

    /// Runs ambientctl on this home to the end.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("running ambientctl");
        show("ambientctl", args, &out);
        out
    }

    /// Starts ambientctl on this home beside the test (a dashboard, a traffic loop); its
    /// stdout discarded, its stderr in the test's output. Killed when dropped.
    pub fn spawn(&self, args: &[&str]) -> e2e::Background {
        eprintln!("$ ambientctl {} &", args.join(" "));
        e2e::Background(
            self.command(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .expect("spawning ambientctl"),
        )
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "ambientctl {args:?} failed");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("JSON output")
    }

    /// `GET path` on the running mesh's control socket (a proxy's port reached inside the
    /// mesh: `/ztunnel/<node>/15020/metrics`, `/pod/<ns>/<name>/<port>/<path>`): status and
    /// body; status 0 when the socket does not answer.
    pub fn control_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(self.home.join("control.sock"))
        else {
            return (0, String::new());
        };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        if write!(s, "GET {path} HTTP/1.0\r\nHost: mesh\r\n\r\n").is_err() {
            return (0, String::new());
        }
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        e2e::loopback::split_response(&raw)
    }

    /// Runs `args` until `done` accepts the output, for at most `timeout`.
    pub fn until(
        &self,
        args: &[&str],
        timeout: Duration,
        done: impl Fn(&Output) -> bool,
    ) -> Output {
        let start = Instant::now();
        loop {
            let out = self.run(args);
            if done(&out) {
                return out;
            }
            assert!(
                start.elapsed() < timeout,
                "ambientctl {args:?} did not reach the expected result in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if self.home.join("mesh.json").exists() {
            let _ = Command::new(EXE)
                .arg("down")
                .env("AMBIENT_HOME", &self.home)
                .output();
        }
    }
}

/// Sum of the samples of `family` in Prometheus text `metrics` whose labels include every
/// `want` pair.
pub fn metric_sum(metrics: &str, family: &str, want: &[(&str, &str)]) -> u64 {
    let samples = proxy_core::exposition::parse(metrics).expect("Prometheus text");
    proxy_core::exposition::sum(&samples, family, want) as u64
}
