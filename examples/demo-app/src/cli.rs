//! The command line.

use std::net::IpAddr;

use clap::{Args, Parser, Subcommand};
use hyper::Method;
use hyper::header::{HeaderName, HeaderValue};

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
    /// Send HTTP requests, like a small curl -f.
    Get(GetArgs),
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
pub struct GetArgs {
    /// The URL (http://HOST[:PORT][/PATH]).
    pub url: String,
    /// Send the request this many times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Wait this long between two requests.
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// Request method.
    #[arg(short = 'X', long = "request", default_value = "GET", value_parser = parse_method)]
    pub method: Method,
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Print the status line and the response headers before the body.
    #[arg(short = 'i', long = "include")]
    pub include: bool,
    /// Deadline of each request (resolve, connect, request and response).
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

fn parse_method(raw: &str) -> Result<Method, String> {
    Method::from_bytes(raw.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid method {raw:?}"))
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
        assert_eq!(args.method, Method::HEAD);
        assert_eq!(args.headers.len(), 2);
        assert!(args.include);
        assert!(Cli::try_parse_from(["demo-app", "get", "http://x/", "--count", "0"]).is_err());
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
