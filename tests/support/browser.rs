//! Headless Chromium (Debian's `chromium`, which `.ci/run` installs) on the dashboard: the
//! DOM it renders, screenshots, and reading attributes out of the dumped DOM.
//!
//! Without `chromium` in `$PATH` the browser checks fail (saying how to get it), unless
//! `AMBIENT_SKIP_BROWSER=1`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::EXE;

/// Where the screenshots go: `<target>/dashboard-test/`.
pub fn output_dir() -> PathBuf {
    let target = EXE
        .path()
        .parent()
        .and_then(Path::parent)
        .expect("target dir");
    let dir = target.join("dashboard-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian's `chromium`, or why the browser checks are skipped (`None`). Panics when it is
/// missing and not skipped.
pub fn chromium() -> Option<PathBuf> {
    if std::env::var("AMBIENT_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("AMBIENT_SKIP_BROWSER=1: browser checks skipped");
        return None;
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None => panic!(
            "the dashboard test needs Debian's `chromium` (headless) in $PATH: .ci/run installs \
             it (`apt-get install -y --no-install-recommends chromium`, as root); set \
             AMBIENT_SKIP_BROWSER=1 to skip the browser checks"
        ),
    }
}

/// Runs headless Chromium on `url` with `extra` arguments (at most 60 s); its stdout.
pub fn browse(chromium: &Path, profile: &Path, url: &str, extra: &[&str]) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running chromium");
    let mut out = String::new();
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let start = Instant::now();
    loop {
        if child.try_wait().expect("waiting for chromium").is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().expect("reader")
}

/// The opening tag of the SVG group of edge `id` in a dumped DOM (attribute values have
/// `>` escaped, so the tag ends at the first `>`), and what follows up to the next edge.
pub fn edge_tag<'a>(dom: &'a str, id: &str) -> Option<(&'a str, &'a str)> {
    let escaped = id.replace('>', "&gt;");
    let at = dom
        .find(&format!("data-edge=\"{escaped}\""))
        .or_else(|| dom.find(&format!("data-edge=\"{id}\"")))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let rest = &dom[end..];
    let body_end = rest[1..]
        .find("data-edge=")
        .or_else(|| rest.find("class=\"nodes\""))
        .unwrap_or(rest.len());
    Some((&dom[start..=end], &rest[..body_end]))
}

/// The value of attribute `name` in a tag.
pub fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[at..at + tag[at..].find('"')?])
}

/// Dumps the page's DOM until `done` accepts it (at most `timeout`).
pub fn dom_until(
    chromium: &Path,
    profile: &Path,
    url: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let dom = browse(chromium, profile, url, &["--dump-dom"]);
        if done(&dom) {
            return dom;
        }
        assert!(
            start.elapsed() < timeout,
            "the page did not show what was expected in {timeout:?}; last DOM:\n{dom}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every opening tag in a dumped DOM that carries attribute `name`.
pub fn tags_with<'a>(dom: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!(" {name}=\"");
    let mut tags = Vec::new();
    let mut from = 0;
    while let Some(found) = dom[from..].find(&needle) {
        let at = from + found;
        let start = dom[..at].rfind('<').expect("inside a tag");
        let end = at + dom[at..].find('>').expect("a closed tag");
        tags.push(&dom[start..=end]);
        from = end;
    }
    tags
}

/// `(x, y)` of a `transform="translate(x,y)"` attribute.
pub fn translation(tag: &str) -> Option<(f64, f64)> {
    let inner = attr(tag, "transform")?
        .strip_prefix("translate(")?
        .strip_suffix(')')?;
    let (x, y) = inner.split_once(',')?;
    Some((x.trim().parse().ok()?, y.trim().parse().ok()?))
}
