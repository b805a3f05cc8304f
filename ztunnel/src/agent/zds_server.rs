//! The agent's side of ZDS: for each ztunnel that connects, send every known pod, then
//! `SnapshotSent`, then live changes, waiting for an ack after each.

use std::sync::Arc;
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

/// Accepts ztunnel connections forever; a new one supersedes the previous.
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
    let (tx, rx) = mpsc::channel(64);
    let result = run(&agent, &conn, tx.clone(), rx).await;
    agent.end_session(&tx);
    match result {
        Err(ZdsError::Closed) => info!("ztunnel disconnected"),
        Err(e) => warn!(error = %e, "ZDS session ended"),
        Ok(()) => {}
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
    tx: mpsc::Sender<Command>,
    mut rx: mpsc::Receiver<Command>,
) -> Result<(), ZdsError> {
    let (hello, _) = tokio::time::timeout(HELLO_TIMEOUT, conn.recv::<ZdsHello>())
        .await
        .map_err(|_| ZdsError::Protocol("no hello from ztunnel".into()))??;
    info!(version = hello.version, "ztunnel connected");
    let snapshot = agent.start_session(tx);
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
