//! Where cluster state comes from. Each source sends [`Change`](crate::model::Change)s into
//! one channel; the controller applies them to its [`ClusterState`](crate::model::ClusterState).
//!
//! - [`manifests`]: a directory of YAML manifests, re-scanned on change.
//! - [`kubernetes`]: the Kubernetes API, through kube-rs watchers.
//! - [`allocations`]: the local runtime's placements and addresses for manifest objects.
//! - [`yaml`]: the manifests' YAML, with the position of every node.

pub mod allocations;
pub mod kubernetes;
pub mod manifests;
pub mod yaml;

use std::fmt;
use std::path::PathBuf;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// Something a user should fix, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters; only with a line.
    pub column: Option<usize>,
    /// `Kind/namespace/name` when known.
    pub object: Option<String>,
    pub message: String,
}

impl Diagnostic {
    /// A finding at `at` (or about the whole file).
    pub fn new(
        severity: Severity,
        file: PathBuf,
        at: Option<yaml::Position>,
        object: Option<String>,
        message: String,
    ) -> Self {
        Diagnostic {
            severity,
            file,
            line: at.map(|p| p.line),
            column: at.map(|p| p.column),
            object,
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        write!(f, ": {}", self.message)
    }
}
