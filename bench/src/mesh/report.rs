//! The figures of one run: the printed table, the JSON file, and where and on what they were
//! measured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path as FsPath;

use serde::Serialize;

use super::Path;

/// What a figure should reach (printed, never asserted).
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// mesh ÷ direct at least this (higher is better).
    RatioAtLeast(f64),
    /// mesh − direct at most this many units (latency added).
    AddedAtMost(f64),
    /// The path's figure at most this.
    AtMost(f64),
}

/// A target and whether one path's figure met it.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub path: &'static str,
    pub target: String,
    pub met: Option<bool>,
}

impl Target {
    fn describe(self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("ratio ≥ {r}"),
            Target::AddedAtMost(v) => format!("added ≤ {v} {unit}"),
            Target::AtMost(v) => format!("≤ {v} {unit}"),
        }
    }
}

/// One measured quantity, on each path where it means something.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub key: String,
    pub label: String,
    pub unit: &'static str,
    /// Path name → value.
    pub values: BTreeMap<&'static str, f64>,
    /// Path name → its value ÷ the direct value.
    pub ratio_to_direct: BTreeMap<&'static str, f64>,
    /// What the figure should reach, per path judged.
    pub targets: Vec<Goal>,
}

impl Figure {
    pub fn new(key: impl Into<String>, label: impl Into<String>, unit: &'static str) -> Self {
        Figure {
            key: key.into(),
            label: label.into(),
            unit,
            values: BTreeMap::new(),
            ratio_to_direct: BTreeMap::new(),
            targets: Vec::new(),
        }
    }

    pub fn set(&mut self, path: Path, value: f64) -> &mut Self {
        self.values.insert(path.name(), value);
        if let Some(direct) = self.values.get(Path::Direct.name()).copied() {
            self.ratio_to_direct = self
                .values
                .iter()
                .filter(|(p, _)| **p != Path::Direct.name() && direct != 0.0)
                .map(|(p, v)| (*p, v / direct))
                .collect();
        }
        self
    }

    pub fn get(&self, path: Path) -> Option<f64> {
        self.values.get(path.name()).copied()
    }

    /// Judges the mesh figure against `target`.
    pub fn target(&mut self, target: Target) -> &mut Self {
        self.target_on(Path::Mesh, target)
    }

    /// Judges `path`'s figure against `target` (set the values first).
    pub fn target_on(&mut self, path: Path, target: Target) -> &mut Self {
        let value = self.get(path);
        let direct = self.get(Path::Direct);
        let met = match (target, value, direct) {
            (Target::RatioAtLeast(r), Some(m), Some(d)) if d > 0.0 => Some(m / d >= r),
            (Target::AddedAtMost(v), Some(m), Some(d)) => Some(m - d <= v),
            (Target::AtMost(v), Some(m), _) => Some(m <= v),
            _ => None,
        };
        self.targets.push(Goal {
            path: path.name(),
            target: target.describe(self.unit),
            met,
        });
        self
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn here() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// The commit checked out in the repository around the current directory, read from `.git`
/// (no `git` binary needed).
pub fn commit() -> Option<String> {
    let cwd = std::env::current_dir().ok()?;
    let git = cwd
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|g| g.is_dir())?;
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref: ") else {
        return Some(head.to_string());
    };
    if let Ok(id) = std::fs::read_to_string(git.join(reference)) {
        return Some(id.trim().to_string());
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    packed.lines().find_map(|l| {
        let (id, name) = l.split_once(' ')?;
        (name == reference).then(|| id.to_string())
    })
}

/// Today (UTC) as YYYY-MM-DD.
pub fn today() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    )
}

fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        // Thousands separated: 12,345.
        let s = format!("{:.0}", v);
        let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The figures as a Markdown table: one column per path, the ratio to direct, the target.
pub fn table(figures: &[Figure]) -> String {
    let mut out = String::from("| figure |");
    for p in Path::ALL {
        let _ = write!(out, " {} |", p.name());
    }
    for p in Path::ALL.iter().filter(|p| **p != Path::Direct) {
        let _ = write!(out, " {}/direct |", p.name());
    }
    out.push_str(" target |\n|---|");
    for _ in 0..(2 * Path::ALL.len() - 1) {
        out.push_str("---:|");
    }
    out.push_str("---|\n");
    for f in figures {
        let _ = write!(out, "| {} ({}) |", f.label, f.unit);
        for p in Path::ALL {
            let v = f.get(p).map(number).unwrap_or_else(|| "—".into());
            let _ = write!(out, " {v} |");
        }
        for p in Path::ALL.iter().filter(|p| **p != Path::Direct) {
            let r = f
                .ratio_to_direct
                .get(p.name())
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "—".into());
            let _ = write!(out, " {r} |");
        }
        let only_mesh = f.targets.iter().all(|g| g.path == Path::Mesh.name());
        let target: Vec<String> = f
            .targets
            .iter()
            .map(|g| {
                let who = if only_mesh {
                    String::new()
                } else {
                    format!("{}: ", g.path)
                };
                match g.met {
                    Some(true) => format!("{who}{}: met", g.target),
                    Some(false) => format!("{who}{}: **missed**", g.target),
                    None => format!("{who}{}", g.target),
                }
            })
            .collect();
        let _ = writeln!(out, " {} |", target.join("; "));
    }
    out
}

pub fn write_json(path: &FsPath, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(12345.4), "12,345");
        assert_eq!(number(512.2), "512");
        assert_eq!(number(20.71), "20.7");
        assert_eq!(number(5.004), "5.00");
        assert_eq!(number(0.1234), "0.123");
    }

    #[test]
    fn ratios_and_targets() {
        let mut f = Figure::new("t", "throughput", "Gbit/s");
        f.set(Path::Direct, 20.0).set(Path::Mesh, 5.0);
        f.target(Target::RatioAtLeast(0.5));
        assert_eq!(f.ratio_to_direct["mesh"], 0.25);
        assert_eq!(f.targets[0].met, Some(false));
        let t = table(&[f.clone()]);
        assert!(
            t.contains(
                "| throughput (Gbit/s) | 20.0 | 5.00 | — | 0.25 | — | ratio ≥ 0.5: **missed** |"
            ),
            "{t}"
        );
        f.set(Path::Waypoint, 12.0);
        f.target_on(Path::Waypoint, Target::RatioAtLeast(0.5));
        assert_eq!(f.ratio_to_direct["waypoint"], 0.6);
        let t = table(&[f]);
        assert!(
            t.contains("| 20.0 | 5.00 | 12.0 | 0.25 | 0.60 | mesh: ratio ≥ 0.5: **missed**; waypoint: ratio ≥ 0.5: met |"),
            "{t}"
        );
    }
}
