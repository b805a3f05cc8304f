//! One line per request on stdout: what was asked, what was answered, how long it took, who
//! asked, and the calls made to other services on the way.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{Method, StatusCode};

/// A call a role made to another service while serving a request.
#[derive(Debug, Clone)]
pub struct OutboundCall {
    pub method: Method,
    pub url: String,
    /// The status received, or why there was none.
    pub outcome: Result<StatusCode, String>,
    pub duration: Duration,
}

impl fmt::Display for OutboundCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.method, self.url)?;
        match &self.outcome {
            Ok(status) => write!(f, "{}", status.as_u16())?,
            Err(e) => write!(f, "error: {e}")?,
        }
        write!(f, " {:.1}ms", millis(self.duration))
    }
}

/// Everything an access log line says.
#[derive(Debug)]
pub struct Entry<'a> {
    pub at: SystemTime,
    pub role: &'a str,
    pub pod: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub status: StatusCode,
    pub duration: Duration,
    pub peer: SocketAddr,
    pub outbound: &'a [OutboundCall],
}

impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} access role={} pod={} method={} path={:?} status={} duration_ms={:.1} peer={}",
            Rfc3339(self.at),
            self.role,
            self.pod,
            self.method,
            self.path,
            self.status.as_u16(),
            millis(self.duration),
            self.peer,
        )?;
        for call in self.outbound {
            write!(f, " outbound={:?}", call.to_string())?;
        }
        Ok(())
    }
}

/// Writes `entry` as one line on stdout.
pub fn write(entry: &Entry<'_>) {
    // Rust's stdout is line buffered, so each line is flushed as a whole even into a pipe.
    // A closed stdout must not take the request down with it: errors are dropped.
    let _ = writeln!(std::io::stdout().lock(), "{entry}");
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A UTC timestamp with millisecond precision, `2006-01-02T15:04:05.000Z`.
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        let mut out = String::with_capacity(24);
        let _ = write!(
            out,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since.subsec_millis()
        );
        f.write_str(&out)
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Count in 400-year eras starting on 0000-03-01, so that leap days end each year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        let at = |s: u64, ms: u64| {
            Rfc3339(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms)).to_string()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
    }

    #[test]
    fn formats_entries() {
        let calls = [
            OutboundCall {
                method: Method::GET,
                url: "http://ratings:9080/ratings/0".into(),
                outcome: Ok(StatusCode::OK),
                duration: Duration::from_micros(2500),
            },
            OutboundCall {
                method: Method::GET,
                url: "http://x/".into(),
                outcome: Err("refused".into()),
                duration: Duration::ZERO,
            },
        ];
        let line = Entry {
            at: UNIX_EPOCH,
            role: "reviews",
            pod: "reviews-v2",
            method: &Method::GET,
            path: "/reviews/0",
            status: StatusCode::OK,
            duration: Duration::from_millis(3),
            peer: "10.0.0.1:4000".parse().unwrap(),
            outbound: &calls,
        }
        .to_string();
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000Z access role=reviews pod=reviews-v2 method=GET \
             path=\"/reviews/0\" status=200 duration_ms=3.0 peer=10.0.0.1:4000 \
             outbound=\"GET http://ratings:9080/ratings/0 200 2.5ms\" \
             outbound=\"GET http://x/ error: refused 0.0ms\""
        );
    }
}
