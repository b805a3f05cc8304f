//! `bench mesh-server`: the servers the mesh benchmark's load generator talks to, run as
//! their own process inside the server pod's network namespace (the client side holds as
//! many sockets as the server side, and each process has its own descriptor limit).

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket};

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// HTTP/1.1 port (fixed-size bodies, keep-alive).
    #[arg(long)]
    pub http: u16,
    /// Bulk sink port (reads to the end, answers with the byte count).
    #[arg(long)]
    pub sink: u16,
    /// Echo port (held idle connections).
    #[arg(long)]
    pub echo: u16,
    /// Response body size.
    #[arg(long, default_value_t = loadgen::http::DEFAULT_BODY)]
    pub body: usize,
}

fn listen(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
    // Bursts of connections (the connection-rate and memory figures) must not overflow it.
    socket.listen(4096)
}

/// Serves until killed.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let http = listen(args.http)?;
        let sink = listen(args.sink)?;
        let echo = listen(args.echo)?;
        tokio::try_join!(
            loadgen::http::serve_http(http, args.body),
            loadgen::bulk::serve_sink(sink),
            loadgen::bulk::serve_echo(echo),
        )?;
        Ok(())
    })
}
