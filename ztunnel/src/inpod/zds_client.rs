//! ztunnel's side of ZDS: connect to the node agent, say hello, then apply and acknowledge
//! every request. Reconnects with backoff whenever the session ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambient_proto::istio::workload::zds::{
    Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request::Payload,
    workload_response,
};
use ambient_proto::zds::{ZdsConnection, ZdsError};
use tracing::{info, warn};

use super::WorkloadManager;
use proxy_core::readiness::Readiness;

/// Runs ZDS sessions forever.
pub async fn run(path: PathBuf, manager: Arc<WorkloadManager>, readiness: Readiness) {
    let mut delay = Duration::from_millis(100);
    loop {
        match session(&path, &manager, &readiness).await {
            Ok(()) => {}
            Err(ZdsError::Closed) => info!("node agent closed the ZDS session"),
            Err(e) => warn!(socket = %path.display(), error = %e, "ZDS session failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    path: &Path,
    manager: &WorkloadManager,
    readiness: &Readiness,
) -> Result<(), ZdsError> {
    let conn = ZdsConnection::connect(path).await?;
    conn.send(
        &ZdsHello {
            version: Version::V1 as i32,
        },
        None,
    )
    .await?;
    info!(socket = %path.display(), "connected to the node agent");
    manager.begin_snapshot();
    loop {
        let (request, fd) = conn.recv::<WorkloadRequest>().await?;
        let result = match request.payload {
            Some(Payload::Add(add)) => match fd {
                Some(fd) => manager.add(&add.uid, add.workload_info, fd),
                None => Err(format!("AddWorkload {} came without a netns fd", add.uid)),
            },
            Some(Payload::Keep(keep)) => manager.keep(&keep.uid),
            Some(Payload::Del(del)) => manager.del(&del.uid),
            Some(Payload::SnapshotSent(_)) => {
                manager.end_snapshot();
                readiness.mark("zds");
                info!("node agent snapshot applied");
                Ok(())
            }
            None => Err("WorkloadRequest with no payload".to_string()),
        };
        if let Err(e) = &result {
            warn!(error = %e, "ZDS request failed");
        }
        let ack = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: result.err().unwrap_or_default(),
            })),
        };
        conn.send(&ack, None).await?;
    }
}
