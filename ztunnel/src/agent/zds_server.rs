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
    // Ends when a newer session superseded this one and then ended itself (the agent drops
    // this session's sender): the ztunnel on the other end reconnects if it is still serving.
    while let Some(command) = rx.recv().await {
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
    Ok(())
}
