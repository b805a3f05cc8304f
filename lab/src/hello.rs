//! The lab's own app: a line-answering server and its client, enough to show who reached
//! whom through the mesh (the demo and the L4 tests use it).

use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use ztunnel::inpod::netns::Netns;

use crate::http::{connect_from, listen_in};

/// Serves "hello" lines in a pod: each line gets an answer naming the server and the peer.
pub fn serve_hello(netns: &Netns, port: u16, who: String) -> std::io::Result<()> {
    let listener = listen_in(netns, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let who = who.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = format!("{who} got {line:?} from {peer}\n");
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Sends one line from inside `netns` to `dst` and returns the answer.
pub async fn ask(netns: &Netns, dst: SocketAddr, line: &str) -> std::io::Result<String> {
    let stream = connect_from(netns, dst).await?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    Ok(answer.trim_end().to_string())
}
