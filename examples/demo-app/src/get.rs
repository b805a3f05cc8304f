//! `demo-app get`: a small curl. Exit codes follow curl's: 0 on 2xx/3xx, 22 on an HTTP
//! error status (as with `curl -f`), 7 when the host cannot be resolved or connected to,
//! 28 on timeout, 56 when the connection fails mid-exchange, 3 for a malformed URL, 1 for
//! an unsupported scheme.

use std::io::{self, Write};
use std::time::Duration;

use crate::cli::GetArgs;
use crate::client::{self, RequestSpec, Response};

/// Exit code when every request succeeded.
pub const OK: i32 = 0;
/// Exit code of an HTTP status of 400 or above.
pub const HTTP_ERROR: i32 = 22;
/// Exit code when the host cannot be resolved or connected to.
pub const COULD_NOT_CONNECT: i32 = 7;

/// The curl exit code matching a failed request.
pub fn exit_code(error: &client::Error) -> i32 {
    match error {
        client::Error::UnsupportedScheme(_) => 1,
        client::Error::InvalidUrl { .. } | client::Error::InvalidHeader(_) => 3,
        client::Error::Resolve { .. }
        | client::Error::NoAddress(_)
        | client::Error::Connect { .. } => COULD_NOT_CONNECT,
        client::Error::Timeout { .. } => 28,
        client::Error::Exchange { .. } => 56,
    }
}

/// Sends the requests; returns the exit code (that of the last failure, if any).
pub async fn run(args: &GetArgs) -> i32 {
    let spec = RequestSpec {
        method: args.method.clone(),
        url: args.url.clone(),
        headers: args.headers.clone(),
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let mut code = OK;
    for i in 0..args.count {
        if i > 0 && args.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
        let this = match client::send(&spec).await {
            Ok(response) => report(&response, args.include),
            Err(e) => {
                eprintln!("demo-app get: {e}");
                exit_code(&e)
            }
        };
        if this != OK {
            code = this;
        }
    }
    code
}

fn report(response: &Response, include: bool) -> i32 {
    let status = response.status;
    if status.as_u16() >= 400 {
        eprintln!("HTTP {}", status.as_u16());
        return HTTP_ERROR;
    }
    let mut out = io::stdout().lock();
    let written = (|| -> io::Result<()> {
        if include {
            writeln!(
                out,
                "{:?} {} {}",
                response.version,
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )?;
            for (name, value) in &response.headers {
                writeln!(out, "{name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
            }
            writeln!(out)?;
        }
        out.write_all(&response.body)?;
        out.flush()
    })();
    match written {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("demo-app get: cannot write the response: {e}");
            // curl's "failed writing received data".
            23
        }
    }
}
