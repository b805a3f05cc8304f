//! Where OTLP goes: the endpoint, the transport and TLS roots, as `--otlp-endpoint`,
//! `--otlp-protocol` and `--otlp-ca-cert` (the OpenTelemetry SDKs' `OTEL_EXPORTER_OTLP_*`)
//! give them.

use std::sync::Arc;

/// OTLP/gRPC's well-known port.
pub const DEFAULT_PORT: u16 = 4317;
/// OTLP/HTTP's well-known port.
pub const DEFAULT_HTTP_PORT: u16 = 4318;
/// Where a CA bundle usually is when `--otlp-ca-cert` is not given (Debian, then Fedora).
pub const SYSTEM_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// OTLP's transports (`OTEL_EXPORTER_OTLP_PROTOCOL`'s values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    /// gRPC (port 4317).
    #[default]
    #[value(name = "grpc")]
    #[serde(rename = "grpc")]
    Grpc,
    /// HTTP/1.1 POSTs of protobuf bodies (port 4318, `/v1/traces`).
    #[value(name = "http/protobuf")]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    /// The name `--otlp-protocol` and `OTEL_EXPORTER_OTLP_PROTOCOL` take.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// What a proxy is told about OTLP export, as tools that start proxies pass it on
/// (`--otlp-endpoint`, `--otlp-protocol`, `--otlp-ca-cert`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Export {
    pub endpoint: String,
    pub protocol: Protocol,
    pub ca_cert: Option<std::path::PathBuf>,
}

/// The flags (and the OpenTelemetry SDKs' environment variables) that turn export on.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OtlpArgs {
    /// Export over OTLP to this receiver (`http[s]://HOST[:PORT][/PATH]`; port 4317 for
    /// gRPC, 4318 for HTTP, whose PATH is a base under which `/v1/traces` and `/v1/logs` are
    /// posted): the waypoint's request spans, and the access log as log records. A mesh
    /// Service's name (`<svc>.<ns>[.svc.cluster.local]`) is resolved from the proxy's xDS
    /// view. Unset: nothing is exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP over gRPC (the default) or over HTTP with protobuf bodies.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum)]
    pub otlp_protocol: Option<Protocol>,
    /// PEM roots the receiver's certificate is checked against (`https://` endpoints;
    /// default: the system's CA bundle).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE", value_name = "PEM")]
    pub otlp_ca_cert: Option<std::path::PathBuf>,
}

impl OtlpArgs {
    /// What the flags ask for, when an endpoint is set.
    pub fn export(&self) -> Option<Export> {
        let endpoint = self.otlp_endpoint.as_deref()?.trim();
        (!endpoint.is_empty()).then(|| Export {
            endpoint: endpoint.to_string(),
            protocol: self.otlp_protocol.unwrap_or_default(),
            ca_cert: self.otlp_ca_cert.clone(),
        })
    }

    /// The flags for `export` (`None`: no export).
    pub fn from_export(export: Option<&Export>) -> OtlpArgs {
        OtlpArgs {
            otlp_endpoint: export.map(|e| e.endpoint.clone()),
            otlp_protocol: export.map(|e| e.protocol),
            otlp_ca_cert: export.and_then(|e| e.ca_cert.clone()),
        }
    }
}

impl Export {
    /// The endpoint parsed for the protocol, with its TLS roots read.
    pub fn target(&self) -> Result<Target, String> {
        Target::parse_as(&self.endpoint, self.protocol)?.with_roots(self.ca_cert.as_deref())
    }
}

/// Where OTLP goes: `--otlp-endpoint` and `--otlp-protocol`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// `https://`: TLS, the certificate checked for `host`.
    pub tls: bool,
    /// OTLP/HTTP's base path, under which each signal has its own (`/v1/traces`,
    /// `/v1/logs`); empty for the root, and always for gRPC.
    pub path: String,
    /// PEM roots for TLS (`--otlp-ca-cert`, else the system's bundle); set by [`Target::with_roots`].
    pub roots: Option<Arc<[u8]>>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

impl Target {
    /// An OTLP/gRPC endpoint: see [`Target::parse_as`].
    pub fn parse(endpoint: &str) -> Result<Target, String> {
        Target::parse_as(endpoint, Protocol::Grpc)
    }

    /// `http[s]://host[:port][/path]` or `host[:port]`. The port defaults to the protocol's
    /// (4317, 4318); gRPC takes no path; OTLP/HTTP takes a base path, as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` does (signals post below it: `<path>/v1/traces`).
    pub fn parse_as(endpoint: &str, protocol: Protocol) -> Result<Target, String> {
        let e = endpoint.trim();
        let (tls, rest) = if let Some(r) = e.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = e.strip_prefix("https://") {
            (true, r)
        } else if e.contains("://") {
            return Err(format!("{endpoint}: expected http[s]://HOST[:PORT]"));
        } else {
            (false, e)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = match (protocol, path.trim_end_matches('/')) {
            (Protocol::Grpc, "") => String::new(),
            (Protocol::Grpc, _) => {
                return Err(format!(
                    "{endpoint}: expected http[s]://HOST[:PORT] (OTLP/gRPC has no path)"
                ));
            }
            (Protocol::HttpProtobuf, p) => p.to_string(),
        };
        if authority.is_empty() || path.contains(['?', '#', ' ']) {
            return Err(format!("{endpoint}: expected http[s]://HOST[:PORT][/PATH]"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{endpoint}: unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(format!("{endpoint}: expected a port after ']'")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{endpoint}: bad port {p:?}"))?,
            None if protocol == Protocol::HttpProtobuf => DEFAULT_HTTP_PORT,
            None => DEFAULT_PORT,
        };
        if host.is_empty() {
            return Err(format!("{endpoint}: no host"));
        }
        Ok(Target {
            host: host.to_ascii_lowercase(),
            port,
            protocol,
            tls,
            path,
            roots: None,
        })
    }

    /// Reads the roots a TLS endpoint is checked against: `ca_cert`, else the first system
    /// bundle found. A plaintext endpoint needs none (and a CA given for one is an error: it
    /// says the user expected TLS).
    pub fn with_roots(mut self, ca_cert: Option<&std::path::Path>) -> Result<Target, String> {
        if !self.tls {
            return match ca_cert {
                Some(p) => Err(format!(
                    "{}: a CA ({}) is given for a plaintext endpoint; use https://",
                    self,
                    p.display()
                )),
                None => Ok(self),
            };
        }
        let path = match ca_cert {
            Some(p) => p.to_path_buf(),
            None => SYSTEM_BUNDLES
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    format!(
                        "{self}: TLS needs the collector's CA (--otlp-ca-cert): no system \
                         bundle at {SYSTEM_BUNDLES:?}"
                    )
                })?,
        };
        let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        ambient_proto::tls::certs_from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        self.roots = Some(pem.into());
        Ok(self)
    }
}
