//! The agent's side of ZDS: for each ztunnel that connects, send every known pod, then
//! `SnapshotSent`, then live changes, waiting for an ack after each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ambient_proto::istio::workload::zds::{
    SnapshotSent, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request::Payload,
    workload_response,
};
use ambient_proto::zds::{ZdsConnection, ZdsError, ZdsListener};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Command, NodeAgent};
use crate::inpod::netns::Netns;

const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts ztunnel connections forever; a new one supersedes the previous (which stays open,
/// unused, while that ztunnel drains: [`NodeAgent::end_session`]).
pub async fn serve(agent: Arc<NodeAgent>, mut listener: ZdsListener) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                tokio::spawn(session(agent.clone(), conn));
            }
            Err(e) => {
                warn!(error = %e, "ZDS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn session(agent: Arc<NodeAgent>, conn: ZdsConnection) {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    let id = SESSIONS.fetch_add(1, Ordering::Relaxed);
    // The agent holds the only sender: when it drops it, this session ends.
    let (tx, rx) = mpsc::channel(64);
    let result = run(&agent, &conn, id, tx, rx).await;
    agent.end_session(id);
    match result {
        Err(ZdsError::Closed) => info!("ztunnel disconnected"),
        Err(e) => warn!(error = %e, "ZDS session ended"),
        Ok(()) => info!("superseded ZDS session closed: a newer ztunnel's session ended"),
    }
}

async fn exchange(
    conn: &ZdsConnection,
    request: &WorkloadRequest,
    netns: Option<&Netns>,
) -> Result<Result<(), String>, ZdsError> {
    conn.send(request, netns.map(|n| n.fd())).await?;
    let (response, _) = conn.recv::<WorkloadResponse>().await?;
    match response.payload {
        Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(Ok(())),
        Some(workload_response::Payload::Ack(ack)) => Ok(Err(ack.error)),
        None => Err(ZdsError::Protocol("response without an ack".into())),
    }
}

async fn run(
    agent: &NodeAgent,
    conn: &ZdsConnection,
    id: u64,
    tx: mpsc::Sender<Command>,
    mut rx: mpsc::Receiver<Command>,
) -> Result<(), ZdsError> {
    let (hello, _) = tokio::time::timeout(HELLO_TIMEOUT, conn.recv::<ZdsHello>())
        .await
        .map_err(|_| ZdsError::Protocol("no hello from ztunnel".into()))??;
    info!(version = hello.version, "ztunnel connected");
    let snapshot = agent.start_session(id, tx);
    let count = snapshot.len();
    for (request, netns) in snapshot {
        if let Err(e) = exchange(conn, &request, netns.as_deref()).await? {
            warn!(error = %e, "ztunnel refused a pod from the snapshot");
        }
    }
    let done = WorkloadRequest {
        payload: Some(Payload::SnapshotSent(SnapshotSent {})),
    };
    if let Err(e) = exchange(conn, &done, None).await? {
        warn!(error = %e, "ztunnel refused the snapshot");
    }
    info!(pods = count, "snapshot sent to ztunnel");
    loop {
        let command = tokio::select! {
            // None: a newer session superseded this one and then ended itself (the agent
            // dropped this session's sender); the ztunnel on the other end reconnects if it is
            // still serving.
            command = rx.recv() => match command {
                Some(command) => command,
                None => return Ok(()),
            },
            // Between requests ztunnel sends nothing: a read that ends means it went away,
            // which must end the session now (a newer one ending lets older ones start over).
            unexpected = conn.recv::<WorkloadResponse>() => {
                return match unexpected {
                    Err(e) => Err(e),
                    Ok(_) => Err(ZdsError::Protocol("a response to no request".into())),
                };
            }
        };
        let outcome = exchange(conn, &command.request, command.netns.as_deref()).await;
        match outcome {
            Ok(answer) => {
                let _ = command.reply.send(answer);
            }
            Err(e) => {
                let _ = command.reply.send(Err(e.to_string()));
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ambient_proto::istio::workload::zds::{Ack, Version};

    use super::*;

    /// Connects as a ztunnel would and applies the (empty) snapshot.
    async fn ztunnel(path: &std::path::Path) -> ZdsConnection {
        let conn = ZdsConnection::connect(path).await.unwrap();
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        conn.send(&hello, None).await.unwrap();
        let (request, _) = conn.recv::<WorkloadRequest>().await.unwrap();
        assert!(matches!(request.payload, Some(Payload::SnapshotSent(_))));
        let ack = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack::default())),
        };
        conn.send(&ack, None).await.unwrap();
        conn
    }

    /// A ztunnel replaced by a newer one keeps its session while it drains; if the newer one
    /// goes away first, the older session is closed, so a ztunnel still serving reconnects and
    /// gets a snapshot with the changes it missed.
    #[tokio::test]
    async fn when_the_newest_session_ends_the_superseded_ones_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztunnel.sock");
        let agent = Arc::new(NodeAgent::new(None).unwrap());
        tokio::spawn(serve(agent, ZdsListener::bind(&path).unwrap()));
        let older = ztunnel(&path).await;
        let newer = ztunnel(&path).await;
        drop(newer);
        let ended = tokio::time::timeout(Duration::from_secs(5), older.recv::<WorkloadRequest>())
            .await
            .expect("the older session was closed");
        assert!(matches!(ended, Err(ZdsError::Closed)), "{ended:?}");
    }
}
