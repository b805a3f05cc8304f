#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;

use demo_app::cli::{Cli, Command, EchoArgs, ListenArgs, OtlpSinkArgs};
use demo_app::echo::Echo;
use demo_app::get;
use demo_app::pod::PodInfo;
use demo_app::productpage::Productpage;
use demo_app::ratings::Ratings;
use demo_app::reviews::Reviews;
use demo_app::server::{Role, Server};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let pod = PodInfo::from_env();
        match cli.command {
            Command::Get(args) => {
                let code = get::run(&args).await;
                std::process::exit(code);
            }
            Command::Ratings(listen) => serve(&listen, Ratings::new(pod)).await,
            Command::Files(args) => {
                serve(&args.listen, demo_app::files::Files::new(pod, args.dir)).await
            }
            Command::Reviews(args) => {
                serve(&args.listen, Reviews::new(pod, args.version, args.ratings)).await
            }
            Command::Productpage(args) => {
                serve(&args.listen, Productpage::new(pod, args.reviews)).await
            }
            Command::Echo(args) => serve_echo(args).await,
            Command::OtlpSink(args) => serve_otlp_sink(args).await,
        }
    })
}

async fn serve<R: Role>(listen: &ListenArgs, role: R) -> anyhow::Result<()> {
    let server = Server::bind(SocketAddr::new(listen.address, listen.port)).await?;
    println!(
        "demo-app {} listening on {} pod={}",
        role.name(),
        server.local_addr(),
        role.pod().qualified_name()
    );
    tokio::select! {
        () = server.run(Arc::new(role)) => Ok(()),
        signal = shutdown_signal() => {
            let signal = signal?;
            println!("demo-app: {signal}, exiting");
            Ok(())
        }
    }
}

async fn serve_echo(args: EchoArgs) -> anyhow::Result<()> {
    let echo = Echo::new(args.name, args.version, args.fail_every, args.fail_status)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(demo_app::tls::acceptor(cert, key)?),
        _ => None,
    };
    let server = Server::bind(SocketAddr::new(args.address, args.port)).await?;
    println!(
        "demo-app echo listening on {}{} name={} version={}",
        server.local_addr(),
        if tls.is_some() { " (TLS)" } else { "" },
        echo.name(),
        echo.version()
    );
    // Dropped (and so stopped) when the server returns.
    let mut calls = tokio::task::JoinSet::new();
    let interval = std::time::Duration::from_millis(args.call_interval_ms);
    for url in args.calls {
        calls.spawn(demo_app::caller::call_forever(url, interval));
    }
    tokio::select! {
        () = Arc::new(echo).run(server.into_listener(), tls) => Ok(()),
        signal = shutdown_signal() => {
            let signal = signal?;
            println!("demo-app: {signal}, exiting");
            Ok(())
        }
    }
}

async fn serve_otlp_sink(args: OtlpSinkArgs) -> anyhow::Result<()> {
    let listener = demo_app::otlp_sink::bind(SocketAddr::new(args.address, args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.address, args.port))?;
    println!(
        "demo-app otlp-sink listening on {}",
        listener
            .local_addr()
            .context("cannot read the listening address")?
    );
    tokio::select! {
        r = demo_app::otlp_sink::serve(listener) => r.context("serving OTLP"),
        signal = shutdown_signal() => {
            let signal = signal?;
            println!("demo-app: {signal}, exiting");
            Ok(())
        }
    }
}

/// Waits for SIGTERM (what the runtime sends to stop a pod) or SIGINT.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
