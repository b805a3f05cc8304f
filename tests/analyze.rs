//! `ambientctl analyze` as a user runs it: the built binary on the fixture directories
//! under `tests/fixtures/analyze/` and on the bookinfo example, with a private
//! `AMBIENT_HOME` so that no running mesh is picked up.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e::{EXE, copy_dir};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    workspace().join("tests/fixtures/analyze").join(name)
}

fn analyze(args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("temp home");
    let out = Command::new(EXE)
        .arg("analyze")
        .args(args)
        .env("AMBIENT_HOME", home.path())
        .output()
        .expect("running ambientctl");
    eprintln!(
        "$ ambientctl analyze {}\n-> {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

#[test]
fn clean_directory_has_no_issues() {
    let dir = fixture("clean");
    let out = analyze(&[dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        format!(
            "\u{2714} No validation issues found when analyzing {}.\n",
            dir.display()
        )
    );
}

#[test]
fn clean_directory_as_json_is_an_empty_list() {
    let out = analyze(&[fixture("clean").to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v, serde_json::json!([]));
}

/// (code, level, object, file name) of each expected finding.
const BROKEN: &[(&str, &str, Option<&str>, &str)] = &[
    ("AMB0001", "Error", None, "syntax.yaml"),
    ("AMB0002", "Error", Some("Service shop/typo"), "typo.yaml"),
    ("IST0101", "Error", Some("Service shop/api"), "app.yaml"),
    (
        "IST0127",
        "Warning",
        Some("AuthorizationPolicy shop/api-allow"),
        "policy.yaml",
    ),
    ("AMB0008", "Warning", Some("Service shop/api"), "app.yaml"),
];

#[test]
fn broken_directory_reports_each_problem_and_fails() {
    let out = analyze(&[fixture("broken").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    for h in ["CODE", "LEVEL", "OBJECT", "LOCATION", "MESSAGE"] {
        assert!(header.contains(h), "{header}");
    }
    let rows: Vec<&str> = lines.collect();
    for (code, level, object, file) in BROKEN {
        assert!(
            rows.iter().any(|r| r.starts_with(code)
                && r.contains(level)
                && object.is_none_or(|o| r.contains(o))
                && r.contains(&format!("{file}:"))),
            "no {code} row for {object:?} in {file}:\n{text}"
        );
    }
    // Errors come first.
    let first_warning = rows.iter().position(|r| r.contains("Warning"));
    let last_error = rows.iter().rposition(|r| r.contains("Error"));
    assert!(last_error < first_warning, "{text}");
}

#[test]
fn broken_directory_as_json_and_yaml() {
    let dir = fixture("broken");
    let out = analyze(&[dir.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).expect("json");
    for (code, level, object, file) in BROKEN {
        assert!(
            v.iter().any(|m| m["code"] == *code
                && m["level"] == *level
                && object.is_none_or(|o| m["object"] == o)
                && m["file"].as_str().is_some_and(|f| f.ends_with(file))
                && m["line"].as_u64().is_some()
                && m["message"].as_str().is_some_and(|s| !s.is_empty())),
            "no {code} for {object:?} in {file}: {v:#?}"
        );
    }

    let out = analyze(&[dir.to_str().unwrap(), "-o", "yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let y = ambient_controller::source::yaml::parse(&stdout(&out)).expect("yaml");
    let y = &y[0].value;
    assert_eq!(y.as_array().map(Vec::len), Some(v.len()));
}

#[test]
fn namespace_filter_hides_other_namespaces() {
    let out = analyze(&[fixture("broken").to_str().unwrap(), "-n", "elsewhere"]);
    let text = stdout(&out);
    assert!(!text.contains("shop/"), "{text}");
    // The syntax error concerns no object and stays.
    assert!(text.contains("AMB0001"), "{text}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bookinfo_example_is_clean_apart_from_infos() {
    let dir = workspace().join("examples/bookinfo");
    let out = analyze(&[dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with('\u{2714}'), "{}", stdout(&out));

    let out = analyze(&[dir.to_str().unwrap(), "--verbose", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).expect("json");
    assert!(!v.is_empty());
    assert!(v.iter().all(|m| m["level"] == "Info"), "{v:#?}");
    assert!(
        v.iter()
            .any(|m| m["code"] == "AMB0004" && m["object"] == "ServiceAccount bookinfo/sleep"),
        "{v:#?}"
    );
}

/// The waypoint examples on top of bookinfo (a copy of both in one directory, the namespace
/// using the waypoint as `waypoint apply --enroll-namespace` labels it) draw no warning:
/// every field they use is supported.
#[test]
fn bookinfo_waypoint_examples_are_clean() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("mesh");
    copy_dir(&workspace().join("examples/bookinfo"), &dir);
    copy_dir(&workspace().join("examples/bookinfo-waypoint"), &dir);
    let namespace = std::fs::read_to_string(dir.join("namespace.yaml")).unwrap();
    let enrolled = namespace.replace(
        "    istio.io/dataplane-mode: ambient\n",
        "    istio.io/dataplane-mode: ambient\n    istio.io/use-waypoint: waypoint\n",
    );
    assert_ne!(namespace, enrolled);
    std::fs::write(dir.join("namespace.yaml"), enrolled).unwrap();
    let out = analyze(&[dir.to_str().unwrap(), "-o", "json"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let v: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    assert!(v.iter().all(|m| m["level"] == "Info"), "{v:#?}");
}

#[test]
fn missing_directory_fails_with_a_message() {
    let out = analyze(&["/nonexistent/manifests"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/manifests"), "{err}");
    assert!(out.stdout.is_empty());
}
