//! The CNI plugin's input (`ambient-cni`): what a container runtime passes it, `CNI_ARGS` and
//! the network configuration on stdin (input: `CNI_ARGS`, a NUL byte, the configuration).
//!
//! Checks: nothing panics; an accepted configuration names a supported version; the result
//! passed on is the previous plugin's, unchanged but for `cniVersion`; a pod named by
//! `CNI_ARGS` is told to the agent only outside the excluded namespaces, exactly as named;
//! every error result is JSON with a code the spec allows and the version asked for.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ztunnel::cni_plugin::spec::{self, Command, Invocation};
use ztunnel::cni_plugin::{attachment, passed_through};

fuzz_target!(|data: &[u8]| {
    let (args, config) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let args = String::from_utf8_lossy(args).into_owned();
    let env = |name: &str| match name {
        "CNI_CONTAINERID" => Some("c".to_string()),
        "CNI_NETNS" => Some("/run/netns/p".to_string()),
        "CNI_IFNAME" => Some("eth0".to_string()),
        "CNI_ARGS" => Some(args.clone()),
        _ => None,
    };
    let invocation = match Invocation::from_env(Command::Add, env) {
        Ok(i) => i,
        Err(e) => {
            check_error(&e);
            return;
        }
    };
    let conf = match spec::parse_config(config) {
        Ok(c) => c,
        Err(e) => {
            check_error(&e);
            return;
        }
    };
    assert!(spec::SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
    match passed_through(&conf) {
        Ok(Some(result)) => {
            let prev = conf.prev_result.as_ref().expect("passed through");
            assert_eq!(result["cniVersion"], conf.cni_version.as_str());
            for (k, v) in prev.as_object().expect("an object") {
                if k != "cniVersion" {
                    assert_eq!(&result[k], v, "{k} changed on the way through");
                }
            }
        }
        Ok(None) => unreachable!("ADD always prints a result"),
        Err(e) => {
            assert!(conf.prev_result.is_none());
            check_error(&e);
        }
    }
    match (invocation.pod(), attachment(&conf, &invocation)) {
        (Some(pod), Some(att)) => {
            assert!(!conf.exclude_namespaces.contains(&pod.namespace));
            assert_eq!((att.pod_namespace, att.pod_name), (pod.namespace, pod.name));
        }
        (Some(pod), None) => assert!(conf.exclude_namespaces.contains(&pod.namespace)),
        (None, att) => assert!(att.is_none()),
    }
});

fn check_error(e: &spec::CniError) {
    let json = e.to_json("1.0.0");
    let code = json["code"].as_u64().expect("a numeric code");
    assert!((1..=11).contains(&code) || code == 50 || code == 51 || code >= 100);
    assert_eq!(json["cniVersion"], "1.0.0");
    assert!(!e.msg.is_empty());
}
