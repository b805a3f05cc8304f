//! Typed command lines rendered back into arguments.
//!
//! Every component's flags are one clap type (ztunnel's, the node agent's, the waypoint's,
//! the controller's). Whoever starts a component (`ambientctl install`, the controller's
//! waypoint deployer, the local runtime, the lab, the benchmarks) fills that type and renders
//! it with [`render`], so a flag is spelled in exactly one place and a renamed or retyped flag
//! breaks the build instead of a deployment.
//!
//! Rendering is generic: the value of every field comes from the type's serde form, and the
//! flag that sets it from clap's own description of the type, so nothing is written out per
//! flag. Each type's tests check that parsing what it renders gives the same value back.

use clap::{ArgAction, CommandFactory};
use serde::Serialize;
use serde_json::Value;

/// `--flag value` for every argument of `args` that has a value: `None` is left out, a list
/// is joined with its delimiter (or repeated when it has none), a switch (`SetTrue`) is
/// written only when on.
///
/// # Panics
/// If `T` does not serialize to a map with one entry per clap argument, which is a bug in
/// `T`'s definition (the round-trip test of each type catches it).
pub fn render<T: Serialize + CommandFactory>(args: &T) -> Vec<String> {
    let Value::Object(values) = serde_json::to_value(args).expect("command lines serialize") else {
        panic!("a command line serializes to a map");
    };
    let command = T::command();
    let mut out = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else {
            continue; // help, version
        };
        let Some(value) = values.get(id) else {
            continue;
        };
        let flag = format!("--{long}");
        match (value, arg.get_action()) {
            (Value::Null, _) => {}
            (Value::Bool(on), ArgAction::SetTrue) => {
                if *on {
                    out.push(flag);
                }
            }
            (Value::Array(items), _) => {
                let items: Vec<String> = items.iter().map(scalar).collect();
                match arg.get_value_delimiter() {
                    Some(d) if !items.is_empty() => {
                        out.push(flag);
                        out.push(items.join(&d.to_string()));
                    }
                    Some(_) => {}
                    None => {
                        for item in items {
                            out.push(flag.clone());
                            out.push(item);
                        }
                    }
                }
            }
            (v, _) => {
                out.push(flag);
                out.push(scalar(v));
            }
        }
    }
    out
}

/// A flag's value as it is typed.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Parser, Serialize)]
    struct Example {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 3)]
        count: u32,
        #[arg(long)]
        path: Option<PathBuf>,
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        #[arg(long)]
        tag: Vec<String>,
        #[arg(long)]
        verbose: bool,
        #[arg(long, default_value_t = true, action = ArgAction::Set)]
        enabled: bool,
    }

    fn round_trip(e: &Example) -> Example {
        Example::try_parse_from(std::iter::once("example".to_string()).chain(render(e))).unwrap()
    }

    #[test]
    fn every_kind_of_flag_survives_a_round_trip() {
        let full = Example {
            name: "a b".into(),
            count: 7,
            path: Some("/x/$(NODE_NAME).token".into()),
            nodes: vec!["n1".into(), "n2".into()],
            tag: vec!["t1".into(), "t2".into()],
            verbose: true,
            enabled: false,
        };
        assert_eq!(round_trip(&full), full);
        assert_eq!(
            render(&full),
            [
                "--name",
                "a b",
                "--count",
                "7",
                "--path",
                "/x/$(NODE_NAME).token",
                "--nodes",
                "n1,n2",
                "--tag",
                "t1",
                "--tag",
                "t2",
                "--verbose",
                "--enabled",
                "false"
            ]
        );
        let empty = Example {
            name: String::new(),
            count: 0,
            path: None,
            nodes: vec![],
            tag: vec![],
            verbose: false,
            enabled: true,
        };
        assert_eq!(round_trip(&empty), empty);
        assert!(
            !render(&empty)
                .iter()
                .any(|a| a == "--path" || a == "--verbose")
        );
    }
}
