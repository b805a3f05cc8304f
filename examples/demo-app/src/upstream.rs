//! Calls from one role to another: a GET that expects a JSON answer, recorded for the access
//! log.

use std::time::Instant;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::access_log::OutboundCall;
use crate::client::{self, RequestSpec};

/// Why a call to another service gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Request(#[from] client::Error),
    #[error("{url} answered HTTP {}", .status.as_u16())]
    Status { url: String, status: StatusCode },
    #[error("{url} answered with a body that is not the expected JSON: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// GETs `url`, records the call in `calls`, and decodes a 2xx JSON body as `T`.
pub async fn get_json<T: DeserializeOwned>(
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    calls: &mut Vec<OutboundCall>,
) -> Result<T, Error> {
    let spec = RequestSpec {
        headers,
        ..RequestSpec::get(url)
    };
    let started = Instant::now();
    let result = client::send(&spec).await;
    calls.push(OutboundCall {
        method: Method::GET,
        url: spec.url.clone(),
        outcome: match &result {
            Ok(response) => Ok(response.status),
            Err(e) => Err(e.to_string()),
        },
        duration: started.elapsed(),
    });
    let response = result?;
    if !response.status.is_success() {
        return Err(Error::Status {
            url: spec.url,
            status: response.status,
        });
    }
    serde_json::from_slice(&response.body).map_err(|source| Error::Decode {
        url: spec.url,
        source,
    })
}

/// Joins a base URL (`http://ratings:9080`, with or without a trailing slash) and a path.
pub fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins() {
        assert_eq!(super::join("http://a:1", "/x/0"), "http://a:1/x/0");
        assert_eq!(super::join("http://a:1/", "x/0"), "http://a:1/x/0");
    }
}
