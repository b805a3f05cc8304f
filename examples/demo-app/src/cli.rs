//! The command line.

use std::net::IpAddr;

use clap::{Args, Parser, Subcommand};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};

use crate::client;
use crate::reviews::Version;

/// The bookinfo demo application: one binary, one role per service, plus a small curl.
#[derive(Debug, Parser)]
#[command(name = "demo-app", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the product page: GET /productpage shows the reviews of product 0.
    Productpage(ProductpageArgs),
    /// Serve reviews: GET /reviews/<id>; v2 and v3 include the ratings.
    Reviews(ReviewsArgs),
    /// Serve ratings: GET /ratings/<id>.
    Ratings(ListenArgs),
    /// Answer any request, over HTTP/1.1 or HTTP/2 (h2c), with a JSON description of it.
    ///
    /// `/status/<code>` answers that status; `/delay/<ms>` waits that long first (at most
    /// 60 s).
    Echo(EchoArgs),
    /// Send HTTP requests, like a small curl -f.
    Get(GetArgs),
    /// Serve the files of a directory: GET /<name> (read anew for each request).
    Files(FilesArgs),
    /// Receive traces over OTLP/gRPC (what a waypoint exports with --otlp-endpoint) and
    /// print one JSON line per span.
    OtlpSink(OtlpSinkArgs),
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    /// The directory served.
    #[arg(long)]
    pub dir: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct OtlpSinkArgs {
    /// Port to listen on (0: any free port; the first stdout line says which).
    #[arg(long, default_value_t = 4317)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: IpAddr,
}

/// Where a server role listens.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Port to listen on (0: any free port; the first stdout line says which).
    #[arg(long, env = "PORT", default_value_t = 9080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: IpAddr,
}

#[derive(Debug, Args)]
pub struct ProductpageArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Base URL of the reviews service.
    #[arg(long, env = "REVIEWS_URL", default_value = "http://reviews:9080")]
    pub reviews: String,
}

#[derive(Debug, Args)]
pub struct ReviewsArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Which reviews to serve: v1 without ratings, v2 black stars, v3 red stars.
    #[arg(long, value_enum)]
    pub version: Version,
    /// Base URL of the ratings service (v2 and v3).
    #[arg(long, env = "RATINGS_URL", default_value = "http://ratings:9080")]
    pub ratings: String,
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Port to listen on (0: any free port; the first stdout line says which).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: IpAddr,
    /// The name to answer with (`name` in the body, `x-echo-name` header).
    #[arg(long, env = "POD_NAME", default_value = "echo")]
    pub name: String,
    /// The version to answer with (`version` in the body, `x-echo-version` header).
    #[arg(long, env = "VERSION", default_value = "v1")]
    pub version: String,
    /// Fail requests N, 2N, 3N... (counted across all connections) with --fail-status.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub fail_every: Option<u64>,
    /// The status of the requests failed by --fail-every.
    #[arg(long, value_name = "CODE", default_value = "503", value_parser = parse_status)]
    pub fail_status: StatusCode,
    /// An upstream to GET every --call-interval-ms while serving (repeatable): a service with
    /// dependencies, for meshes generated with a call graph.
    #[arg(long = "call", value_name = "URL", value_parser = parse_call)]
    pub calls: Vec<String>,
    /// How often each --call upstream is called.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub call_interval_ms: u64,
    /// Serve HTTPS with this certificate chain (PEM), as a server outside the mesh would.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

fn parse_call(raw: &str) -> Result<String, String> {
    client::check_url(raw).map_err(|e| e.to_string())?;
    Ok(raw.to_owned())
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The URL (http://HOST[:PORT][/PATH]).
    pub url: String,
    /// Send the request this many times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Wait this long between two requests.
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// Request method (default: GET, or POST with --data).
    #[arg(short = 'X', long = "request", value_parser = parse_method)]
    pub method: Option<Method>,
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Print the status line and the response headers before the body (of failed
    /// responses too; the exit code still says they failed).
    #[arg(short = 'i', long = "include")]
    pub include: bool,
    /// Deadline of each request (resolve, connect, request and response).
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Request body (makes the default method POST, as with curl).
    #[arg(short = 'd', long = "data", value_name = "STRING")]
    pub data: Option<String>,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    pub http2: bool,
    /// Requests in flight at once (the --count requests are shared among them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Print no bodies; once done, print one JSON line summing the outcomes up. The exit code
    /// is then 0 when every request got an HTTP response, whatever its status.
    #[arg(long)]
    pub summary: bool,
    /// With --summary: count the responses by the value of this response header.
    #[arg(long, value_name = "NAME", requires = "summary", value_parser = parse_header_name)]
    pub by_header: Option<HeaderName>,
}

impl GetArgs {
    /// The method to send: -X, else POST when there is a body, else GET.
    pub fn method(&self) -> Method {
        match (&self.method, &self.data) {
            (Some(method), _) => method.clone(),
            (None, Some(_)) => Method::POST,
            (None, None) => Method::GET,
        }
    }
}

fn parse_method(raw: &str) -> Result<Method, String> {
    Method::from_bytes(raw.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid method {raw:?}"))
}

fn parse_status(raw: &str) -> Result<StatusCode, String> {
    raw.parse::<u16>()
        .ok()
        .filter(|code| (200..=999).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("invalid status {raw:?} (expected 200 to 999)"))
}

fn parse_header_name(raw: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(raw.trim().as_bytes())
        .map_err(|_| format!("invalid header name {raw:?}"))
}

fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), String> {
    client::parse_header(raw).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_get() {
        let cli = Cli::try_parse_from([
            "demo-app",
            "get",
            "http://x/",
            "--count",
            "3",
            "-X",
            "head",
            "-H",
            "a: b",
            "-H",
            "c: d",
            "-i",
        ])
        .unwrap();
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        assert_eq!(args.count, 3);
        assert_eq!(args.method(), Method::HEAD);
        assert_eq!(args.headers.len(), 2);
        assert!(args.include);
        assert!(!args.summary && !args.http2 && args.concurrency == 1);
        assert!(Cli::try_parse_from(["demo-app", "get", "http://x/", "--count", "0"]).is_err());
    }

    #[test]
    fn parses_get_load_flags() {
        let get = |args: &[&str]| {
            let cli = Cli::try_parse_from(["demo-app", "get", "http://x/"].iter().chain(args))
                .map_err(|e| e.to_string())?;
            let Command::Get(args) = cli.command else {
                panic!("not get")
            };
            Ok::<_, String>(args)
        };
        let args = get(&[]).unwrap();
        assert_eq!(args.method(), Method::GET);
        let args = get(&[
            "--summary",
            "--by-header",
            "X-Echo-Version",
            "--concurrency",
            "4",
            "--http2",
            "-d",
            "hi",
        ])
        .unwrap();
        assert!(args.summary && args.http2);
        assert_eq!(args.concurrency, 4);
        assert_eq!(args.by_header.as_ref().unwrap().as_str(), "x-echo-version");
        assert_eq!(args.data.as_deref(), Some("hi"));
        assert_eq!(args.method(), Method::POST);
        assert_eq!(
            get(&["-d", "x", "-X", "put"]).unwrap().method(),
            Method::PUT
        );
        // --by-header only means something with --summary.
        assert!(get(&["--by-header", "x"]).is_err());
        assert!(get(&["--concurrency", "0"]).is_err());
    }

    #[test]
    fn parses_echo() {
        let cli = Cli::try_parse_from([
            "demo-app",
            "echo",
            "--port",
            "1",
            "--name",
            "e",
            "--version",
            "v2",
            "--fail-every",
            "3",
            "--fail-status",
            "500",
        ])
        .unwrap();
        let Command::Echo(args) = cli.command else {
            panic!("not echo")
        };
        assert_eq!((args.port, args.name.as_str()), (1, "e"));
        assert_eq!(args.version, "v2");
        assert_eq!(args.fail_every, Some(3));
        assert_eq!(args.fail_status, StatusCode::INTERNAL_SERVER_ERROR);
        for bad in [["--fail-every", "0"], ["--fail-status", "100"]] {
            assert!(Cli::try_parse_from(["demo-app", "echo"].iter().chain(&bad)).is_err());
        }
    }

    #[test]
    fn parses_otlp_sink() {
        let cli = Cli::try_parse_from(["demo-app", "otlp-sink"]).unwrap();
        let Command::OtlpSink(args) = cli.command else {
            panic!("not otlp-sink")
        };
        assert_eq!(args.port, 4317);
    }

    #[test]
    fn parses_reviews() {
        let cli =
            Cli::try_parse_from(["demo-app", "reviews", "--version", "v3", "--port", "1"]).unwrap();
        let Command::Reviews(args) = cli.command else {
            panic!("not reviews")
        };
        assert_eq!(args.version, Version::V3);
        assert_eq!(args.listen.port, 1);
    }
}
