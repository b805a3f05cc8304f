//! The JSON bodies the roles exchange.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /ratings/<id>` on ratings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatingsResponse {
    pub id: u32,
    pub pod: String,
    /// Stars (1 to 5) by reviewer.
    pub ratings: BTreeMap<String, u8>,
}

/// A rating as reviews shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rating {
    pub stars: u8,
    pub color: String,
}

/// One review.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Review {
    pub reviewer: String,
    pub text: String,
    /// Absent in v1, and when ratings could not be fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<Rating>,
}

/// `GET /reviews/<id>` on reviews.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewsResponse {
    pub id: u32,
    pub version: String,
    pub pod: String,
    pub reviews: Vec<Review>,
    /// Why the ratings are missing (v2 and v3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratings_error: Option<String>,
}

/// An error answer of any role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    pub pod: String,
}

/// The answer of the echo role: the request as it arrived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EchoResponse {
    /// `--name`.
    pub name: String,
    /// `--version`.
    pub version: String,
    pub method: String,
    pub path: String,
    /// The query string without the `?` (empty when there is none).
    pub query: String,
    /// The request's authority (`:authority` in HTTP/2), else its `Host` header.
    pub host: Option<String>,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// The request headers by lowercased name; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The length of the request body.
    pub body_bytes: u64,
    /// Whether `--fail-every` failed this request.
    pub failed: bool,
    /// The request's number since the server started (the first is 1).
    pub request: u64,
    /// The address the request came from.
    pub peer: String,
    /// Over TLS (`--tls-cert`): the server name the client asked for (SNI), or `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Why the request could not be served as asked (a bad `/status/` or `/delay/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
