//! `ambientctl rollout status|promote|abort`: canary rollouts (`Rollout`,
//! rollouts.ambient-rs.io/v1alpha1).
//!
//! `status` shows the rollout engine's view (the controller's `/debug/rollouts`: phase, step,
//! canary weight, last analysis, events); `promote` and `abort` set the Rollout's
//! `rollouts.ambient-rs.io/action` label, which the engine acts on at its next look. With a
//! local mesh running they go through the supervisor's control socket (a label overlay);
//! otherwise `promote` and `abort` label the Rollout in the Kubernetes cluster.

use std::collections::BTreeMap;
use std::process::ExitCode;

use ambient_controller::model::rollout::ACTION_LABEL;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::output::{Format, print, table};
use super::waypoint::{Backend, ClusterArgs, backend, no_backend, runtime};
use crate::runtime::control::{self, ApplyRequest, ApplyResult};

#[derive(clap::Subcommand, Debug)]
pub enum RolloutCommand {
    /// Each Rollout's phase, step, canary weight and last analysis (all, or one by name);
    /// exit 1 when the named one has rolled back or cannot run.
    Status(StatusArgs),
    /// Send all traffic to the canary now, skipping the remaining steps.
    Promote(ActionArgs),
    /// Roll back now: all traffic to the stable version.
    Abort(ActionArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// A Rollout's name (all Rollouts of the namespace when absent).
    pub name: Option<String>,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ActionArgs {
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// A Rollout as the controller's `/debug/rollouts` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RolloutView {
    pub namespace: String,
    pub name: String,
    pub phase: String,
    pub step: usize,
    pub steps: usize,
    pub canary_weight: Option<u32>,
    pub message: String,
    pub analysis: Option<serde_json::Value>,
    pub events: Vec<String>,
    pub elapsed_ms: u64,
}

pub fn run(command: RolloutCommand) -> anyhow::Result<ExitCode> {
    match command {
        RolloutCommand::Status(args) => status(args),
        RolloutCommand::Promote(args) => act(args, "promote"),
        RolloutCommand::Abort(args) => act(args, "abort"),
    }
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let home = match backend(&args.cluster)? {
        Backend::Local(home) => home,
        Backend::Kube(_) => {
            return no_backend(
                "rollout status reads the controller's /debug/rollouts, which only the local \
                 mesh exposes to the CLI; in Kubernetes read it from the controller's \
                 monitoring port (15014)",
            );
        }
        Backend::None(why) => return no_backend(&why),
    };
    let all: Vec<RolloutView> =
        control::get_json(&home.control_socket(), "/controller/debug/rollouts")
            .context("reading the controller's rollouts")?;
    let shown: Vec<RolloutView> = all
        .into_iter()
        .filter(|r| args.all_namespaces || r.namespace == args.namespace)
        .filter(|r| args.name.as_ref().is_none_or(|n| &r.name == n))
        .collect();
    if let Some(name) = &args.name
        && shown.is_empty()
    {
        eprintln!("ambientctl: no Rollout {}/{name}", args.namespace);
        return Ok(ExitCode::FAILURE);
    }
    print(args.output, &shown, |rows| {
        render(rows, args.name.is_some())
    });
    let failed = args.name.is_some()
        && shown
            .iter()
            .any(|r| matches!(r.phase.as_str(), "RolledBack" | "Invalid"));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn render(rows: &[RolloutView], events: bool) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.namespace.clone(),
                r.name.clone(),
                r.phase.clone(),
                format!("{}/{}", r.step.min(r.steps), r.steps),
                r.canary_weight
                    .map(|w| format!("{w}%"))
                    .unwrap_or_else(|| "-".into()),
                r.message.clone(),
            ]
        })
        .collect();
    let mut out = table(
        &["NAMESPACE", "NAME", "PHASE", "STEP", "CANARY", "MESSAGE"],
        &cells,
    );
    if events {
        for r in rows {
            for e in &r.events {
                out.push_str(&format!("  {e}\n"));
            }
        }
    }
    out
}

fn act(args: ActionArgs, action: &str) -> anyhow::Result<ExitCode> {
    let ActionArgs {
        name, namespace, ..
    } = &args;
    match backend(&args.cluster)? {
        Backend::Local(home) => {
            let request = ApplyRequest {
                objects: Vec::new(),
                labels: BTreeMap::from([(
                    format!("Rollout/{namespace}/{name}"),
                    BTreeMap::from([(ACTION_LABEL.to_string(), Some(action.to_string()))]),
                )]),
            };
            match control::post_json::<ApplyResult>(&home.control_socket(), "/apply", &request) {
                Ok(_) => {}
                Err(control::ControlError::Status { body, .. }) => {
                    eprintln!("ambientctl: {body}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Backend::Kube(config) => {
            let client = kube::Client::try_from(*config)?;
            let api: kube::Api<ambient_controller::model::Rollout> =
                kube::Api::namespaced(client, namespace);
            let patch = json!({"metadata": {"labels": {ACTION_LABEL: action}}});
            runtime()?
                .block_on(api.patch(
                    name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                ))
                .with_context(|| format!("labelling Rollout {namespace}/{name}"))?;
        }
        Backend::None(why) => return no_backend(&why),
    }
    println!("rollout {namespace}/{name}: {action} requested ({ACTION_LABEL}={action})");
    Ok(ExitCode::SUCCESS)
}
