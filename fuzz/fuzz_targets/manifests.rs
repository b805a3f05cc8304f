//! Manifest documents, as the controller's manifest source and `ambientctl analyze` read
//! them: the YAML reader (`ambient_controller::source::yaml::parse`, which places every
//! node), the object conversion of the manifest source (`source::manifests::parse_file`:
//! typed objects, unknown fields, validation, findings with line and column), the analysis
//! of `ambientctl analyze` (`ambientctl::cmd::analyze::analyze`), and the controller's index
//! over the objects (`index::build`: what the xDS server sends), read back by the proxies'
//! stores.
//!
//! Checks: a document written back as YAML (`yaml::to_string`) reads back to the same value;
//! every path to a node prints and parses back to itself and locates a position inside the
//! text; every finding's position is inside the text; every object has a name; and what the
//! index makes of accepted objects the proxies accept (WDS addresses, L4 authorizations and
//! L7 resources the stores take without a rejection).

#![no_main]

use std::path::Path;

use ambient_controller::index::{self, IndexConfig};
use ambient_controller::model::{Change, ClusterState, Kind};
use ambient_controller::source::manifests::parse_file;
use ambient_controller::source::yaml::{self, Position, Spans};
use ambientctl::cmd::analyze::{Locations, analyze};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proxy_core::state::{StateStore, Update};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines as YAML counts them (a line break is CR LF, CR or LF); a position may sit just
    // past the last.
    let lines = text.replace("\r\n", "\n").split(['\r', '\n']).count() + 1;
    let inside = |p: Position| p.line >= 1 && p.line <= lines;

    match yaml::parse(text) {
        Ok(documents) => {
            for d in &documents {
                let written = yaml::to_string(&d.value).expect("a document can be written");
                let reread = yaml::parse(&written)
                    .unwrap_or_else(|e| panic!("written YAML does not read: {e}\n{written}"));
                assert_eq!(reread.len(), 1, "{written}");
                assert_eq!(reread[0].value, d.value, "{written}");
                let mut budget = 200;
                walk(
                    &d.spans,
                    &d.value,
                    &d.spans,
                    yaml::Path::root(),
                    &inside,
                    &mut budget,
                );
            }
        }
        Err(e) => {
            if let Some(p) = e.position {
                assert!(inside(p), "syntax error at {p}, outside the text");
            }
        }
    }

    let file = Path::new("fuzz.yaml");
    let parsed = parse_file(file, text, None);
    for d in &parsed.diagnostics {
        assert_eq!(d.file, file);
        if let Some(line) = d.line {
            assert!(line >= 1 && line <= lines, "finding at line {line}: {d}");
        }
    }
    for o in &parsed.objects {
        assert!(!o.key().name.is_empty(), "an object without a name");
    }

    let mut at = Locations::default();
    at.add_file(file, text);
    let analysis = analyze(parsed.objects.clone(), &parsed.diagnostics, &at);
    for m in &analysis.messages {
        if let Some(line) = m.line {
            assert!(
                line >= 1 && line <= lines,
                "analysis message at line {line}"
            );
        }
    }

    let mut state = ClusterState::default();
    state.apply(Change::replace(Kind::ALL.to_vec(), parsed.objects));
    let built = index::build(&state, &IndexConfig::default());
    proxies_accept(&built);
});

/// Every node's path round-trips through its written form and locates inside the text.
fn walk(
    root: &Spans,
    value: &Value,
    spans: &Spans,
    path: yaml::Path,
    inside: &impl Fn(Position) -> bool,
    budget: &mut usize,
) {
    if *budget == 0 {
        return;
    }
    *budget -= 1;
    let written = path.to_string();
    if !path.is_root() {
        assert_eq!(
            yaml::Path::parse(&written).as_ref(),
            Some(&path),
            "path {written:?} does not read back"
        );
    }
    assert!(inside(spans.at()), "node {written} at {}", spans.at());
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let child = spans.item(i).expect("every item is placed");
                walk(root, item, child, path.clone().index(i), inside, budget);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let (key_at, child) = spans.entry(k).expect("every entry is placed");
                assert!(inside(key_at), "key {k:?} at {key_at}");
                let child_path = path.clone().key(k.clone());
                assert_eq!(root.locate(&child_path), key_at);
                walk(root, v, child, child_path, inside, budget);
            }
        }
        _ => {}
    }
}

/// What the controller computed from accepted objects, the proxies' stores take whole: the
/// controller never sends what a proxy will NACK.
fn proxies_accept(built: &index::Index) {
    let store = StateStore::new();
    let rejected = store.apply(Update {
        upserts: built.addresses.values().cloned().collect(),
        policy_upserts: built.authorizations.values().cloned().collect(),
        ..Default::default()
    });
    assert!(
        rejected.is_empty(),
        "a proxy rejects the controller's {rejected:?}"
    );
    let l7 = waypoint::fuzzing::L7Store::default();
    let errors = l7.apply(
        built
            .l7
            .iter()
            .map(|(name, r)| (name.clone(), r.encode_to_vec().into()))
            .collect(),
        &[],
    );
    assert!(
        errors.is_empty(),
        "the waypoint rejects the controller's {errors:?}"
    );
}
