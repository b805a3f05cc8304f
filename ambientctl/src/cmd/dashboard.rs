//! `ambientctl dashboard`: a local web page with the live service graph of the mesh.
//!
//! A background task scrapes every proxy's metrics (and the ztunnels' certificates) each
//! `--interval` and turns them into a graph ([`graph`]); a small HTTP server serves the page
//! (HTML, CSS and JS embedded in the binary: no CDN) and the graph as JSON on `/api/graph`,
//! which the page polls. `--once-json` prints one graph (two scrapes an interval apart) and
//! exits.

pub mod graph;
pub mod sources;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::runtime::home::Home;
use graph::Tracker;
use sources::Source;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const VIEW_JS: &str = include_str!("dashboard/view.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Scrapes kept per proxy: rates cover up to this many intervals (minus one).
const KEEP_SCRAPES: usize = 6;

#[derive(clap::Args, Debug, Clone)]
pub struct DashboardArgs {
    /// Address to serve the page on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Port to serve the page on (0: any free port, printed).
    #[arg(long, default_value_t = 20001)]
    pub port: u16,
    /// Time between scrapes of the proxies (`2s`, `500ms`, `1m`, or seconds).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print one graph snapshot (two scrapes an interval apart) as JSON and exit (1 when
    /// the proxies could not be listed).
    #[arg(long)]
    pub once_json: bool,
    /// Read the proxies of this Kubernetes cluster (default when no local mesh runs: the
    /// kubeconfig's cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace of the ztunnel pods (Kubernetes).
    #[arg(long, default_value = "istio-system")]
    pub istio_namespace: String,
}

/// `2s`, `500ms`, `1m`, `1.5` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 2s, 500ms or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s or m)")),
    };
    if !(0.05..=3600.0).contains(&secs) {
        return Err(format!("{s:?}: must be between 50ms and 1h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

async fn source(args: &DashboardArgs) -> anyhow::Result<Source> {
    if args.kubeconfig.is_none() {
        let home = Home::locate();
        if home.running().is_ok() {
            return Ok(Source::Local {
                socket: home.control_socket(),
            });
        }
    }
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| path.display().to_string())?
        }
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "no local mesh is running (start one with `ambientctl up DIR`) and no \
                 Kubernetes cluster is configured ({e}); point --kubeconfig or $KUBECONFIG at \
                 a cluster"
            )
        })?,
    };
    // A proxy that does not answer is shown as such; the next round asks again.
    config.default_retry = false;
    Ok(Source::Kube {
        client: kube::Client::try_from(config).context("creating the Kubernetes client")?,
        istio_namespace: args.istio_namespace.clone(),
    })
}

/// `ambientctl dashboard`.
pub fn run(args: DashboardArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let source = source(&args).await?;
        let start = Instant::now();
        let mut tracker = Tracker::new(source.name(), args.interval.as_secs_f64(), KEEP_SCRAPES);
        if args.once_json {
            tracker.observe(&source.scrape(0.0).await);
            tokio::time::sleep(args.interval).await;
            let graph = tracker.observe(&source.scrape(start.elapsed().as_secs_f64()).await);
            println!("{}", serde_json::to_string_pretty(&graph)?);
            // The proxies could not even be listed: say so in the exit code too.
            return Ok(match &graph.error {
                Some(e) => {
                    eprintln!("ambientctl: {e}");
                    ExitCode::FAILURE
                }
                None => ExitCode::SUCCESS,
            });
        }
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.address, args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.address, args.port))?;
        let addr = listener.local_addr()?;
        let host = match addr.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        println!(
            "dashboard on http://{host}:{}/ (proxies of the {} mesh, every {:?}); Ctrl-C to stop",
            addr.port(),
            source.name(),
            args.interval
        );
        let latest: Latest = Arc::new(Mutex::new(None));
        let scraper = {
            let latest = latest.clone();
            let interval = args.interval;
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let round = source.scrape(start.elapsed().as_secs_f64()).await;
                    let graph = tracker.observe(&round);
                    let body = serde_json::to_vec(&graph).expect("plain data");
                    *latest.lock().expect("poisoned") = Some(Bytes::from(body));
                }
            })
        };
        let server = serve(listener, latest);
        tokio::select! {
            _ = server => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        scraper.abort();
        Ok(ExitCode::SUCCESS)
    })
}

/// The latest graph as JSON (none before the first round).
type Latest = Arc<Mutex<Option<Bytes>>>;

async fn serve(listener: tokio::net::TcpListener, latest: Latest) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let latest = latest.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let latest = latest.clone();
                async move { Ok::<_, Infallible>(route(&req, &latest)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn route(req: &Request<Incoming>, latest: &Latest) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/view.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", VIEW_JS),
        "/style.css" => reply(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        "/api/graph" => match latest.lock().expect("poisoned").clone() {
            Some(body) => reply(StatusCode::OK, "application/json", body),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                "{\"error\":\"first scrape in progress\"}",
            ),
        },
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        other => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no page {other}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("1ms").is_err());
    }

    #[test]
    fn the_page_is_self_contained() {
        // Nothing is loaded from elsewhere (the SVG namespace URI is only a name).
        for text in [INDEX_HTML, APP_JS, VIEW_JS, STYLE_CSS] {
            for remote in [
                "src=\"http",
                "href=\"http",
                "url(http",
                "fetch(\"http",
                "import ",
            ] {
                assert!(!text.contains(remote), "{remote}");
            }
        }
        for file in ["/app.js", "/view.js", "/style.css"] {
            assert!(INDEX_HTML.contains(file), "{file}");
        }
        assert!(APP_JS.contains("/api/graph"));
    }
}
