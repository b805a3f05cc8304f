//! The Prometheus text exposition format (version 0.0.4) that the `/metrics` endpoints serve,
//! read back: `# HELP` / `# TYPE` comments, `name{label="value",...} value [timestamp]`
//! samples, escaped label values, `+Inf`, `-Inf` and `NaN`. The dashboard, the benchmarks
//! and the end-to-end tests read the proxies' metrics with it.

use std::collections::BTreeMap;

/// One sample: a metric name, its labels (sorted by name) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or `""` when the sample does not carry it.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }

    /// A key naming the series (name and labels), stable across scrapes.
    pub fn series_key(&self) -> String {
        let mut key = self.name.clone();
        for (k, v) in &self.labels {
            key.push('\u{1}');
            key.push_str(k);
            key.push('\u{2}');
            key.push_str(v);
        }
        key
    }
}

/// The sum of the values of every sample named `name` whose labels include each of `labels`
/// (a counter over all the series a test or a benchmark does not tell apart).
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Parses a whole exposition. Like Prometheus, a malformed line fails the whole scrape:
/// the error names the line (1-based) and what is wrong.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", i + 1))?);
    }
    Ok(out)
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map(|(i, _)| i)
        .unwrap_or(line.len());
    if name_end == 0 {
        return Err("no metric name".into());
    }
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("unexpected text after the value".into());
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// `a="x",b="y"}` → the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let name_end = s
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit())))
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        if name_end == 0 {
            return Err("bad label name".into());
        }
        let label = s[..name_end].to_string();
        s = s[name_end..].trim_start();
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("no '=' after label {label}"))?
            .trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {label}: value not quoted"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {label}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("label {label}: unterminated value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(label, value);
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_labels_and_special_values() {
        let text = "# HELP istio_requests_total Requests\n\
            # TYPE istio_requests_total counter\n\
            istio_requests_total{reporter=\"waypoint\",response_code=\"200\"} 42\n\
            \n\
            istio_request_duration_milliseconds_bucket{le=\"+Inf\",x=\"a\\\"b\\\\c\\nd\"} 7 1700000000000\n\
            up 1\n\
            weird{a=\"1\",} -Inf\n\
            nan_metric NaN\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].name, "istio_requests_total");
        assert_eq!(s[0].label("reporter"), "waypoint");
        assert_eq!(s[0].label("response_code"), "200");
        assert_eq!(s[0].label("absent"), "");
        assert_eq!(s[0].value, 42.0);
        assert_eq!(s[1].label("le"), "+Inf");
        assert_eq!(s[1].label("x"), "a\"b\\c\nd");
        assert_eq!(s[1].value, 7.0);
        assert_eq!(s[2].name, "up");
        assert!(s[2].labels.is_empty());
        assert_eq!(s[3].value, f64::NEG_INFINITY);
        assert!(s[4].value.is_nan());
    }

    #[test]
    fn series_keys_ignore_label_order() {
        let a = parse("m{a=\"1\",b=\"2\"} 1").unwrap();
        let b = parse("m{b=\"2\",a=\"1\"} 5").unwrap();
        assert_eq!(a[0].series_key(), b[0].series_key());
        let c = parse("m{a=\"1\",b=\"3\"} 1").unwrap();
        assert_ne!(a[0].series_key(), c[0].series_key());
    }

    #[test]
    fn malformed_lines_fail_the_scrape_with_the_line_number() {
        for (text, want) in [
            ("ok 1\nm{a=\"1\" 2\n", "line 2"),
            ("m{a=1} 2", "not quoted"),
            ("m 12abc", "bad value"),
            ("m{a=\"x} 1", "unterminated"),
            ("{a=\"x\"} 1", "no metric name"),
            ("m", "no value"),
            ("<html>", "no metric name"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
