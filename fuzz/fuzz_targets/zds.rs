//! ZDS messages (node agent ↔ ztunnel, `istio.workload.zds`): what ztunnel decodes from the
//! agent (`WorkloadRequest`), what the agent decodes from ztunnel (`ZdsHello`,
//! `WorkloadResponse`), and the identity ztunnel derives from an `AddWorkload`
//! (`ztunnel::inpod::pod_identity`, the identity the pod's certificates will name).
//!
//! Checks: every decoded message encodes and decodes back to itself; an identity is granted
//! only as the agent's strings say, untouched (its namespace is the pod's namespace, its
//! account the pod's account or `default`, in our trust domain, and it is a valid SPIFFE ID
//! that parses back to itself): no string can smuggle a path segment into another pod's
//! identity.

#![no_main]

use ambient_fuzz::TRUST_DOMAIN;
use ambient_proto::identity::Identity;
use ambient_proto::istio::workload::zds::{
    WorkloadRequest, WorkloadResponse, ZdsHello, workload_request::Payload,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = WorkloadRequest::decode(data) {
        round_trip(&request);
        if let Some(Payload::Add(add)) = &request.payload
            && let Some(info) = &add.workload_info
            && let Ok(id) = ztunnel::inpod::pod_identity(TRUST_DOMAIN, info)
        {
            let account = if info.service_account.is_empty() {
                "default"
            } else {
                info.service_account.as_str()
            };
            assert_eq!(id.trust_domain(), TRUST_DOMAIN);
            assert_eq!(id.namespace(), info.namespace);
            assert_eq!(id.service_account(), account);
            assert_eq!(
                id.as_uri(),
                format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/{account}", info.namespace)
            );
            let parsed: Identity = id.as_uri().parse().expect("a granted identity parses");
            assert_eq!(parsed, id);
        }
    }
    if let Ok(response) = WorkloadResponse::decode(data) {
        round_trip(&response);
    }
    if let Ok(hello) = ZdsHello::decode(data) {
        round_trip(&hello);
    }
});

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = m.encode_to_vec();
    let back = M::decode(bytes.as_slice()).expect("what we encode decodes");
    assert_eq!(&back, m);
}
