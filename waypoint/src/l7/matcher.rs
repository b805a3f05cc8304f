//! Compiled value matchers: Gateway API's `StringMatch` / `PathMatch` (regexes compiled once,
//! anchored to the whole value) and Istio's policy patterns (exact, `prefix*`, `*suffix`,
//! `*`).

use ambient_proto::ambient::waypoint::v1 as pb;
use pb::path_match::Kind as PathKind;
use pb::string_match::Kind as StringKind;
use regex::bytes::Regex as BytesRegex;

use super::Problem;

/// Largest compiled regex accepted: a route must not cost the proxy unbounded memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

fn regex_problem(pattern: &str, e: regex::Error) -> Problem {
    Problem::Regex {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    }
}

/// A header or query value matcher (`StringMatch`), on bytes so that non-UTF-8 header values
/// are matched rather than rejected.
#[derive(Clone, Debug)]
pub enum StringMatcher {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    /// Anchored to the whole value.
    Regex(BytesRegex),
}

impl StringMatcher {
    /// Compiles a `StringMatch`; a bad regex or an unknown kind is a [`Problem`].
    pub fn compile(m: &pb::StringMatch) -> Result<Self, Problem> {
        Ok(match &m.kind {
            Some(StringKind::Exact(v)) => StringMatcher::Exact(v.as_bytes().into()),
            Some(StringKind::Prefix(v)) => StringMatcher::Prefix(v.as_bytes().into()),
            Some(StringKind::Regex(r)) => StringMatcher::Regex(
                regex::bytes::RegexBuilder::new(&anchored(r))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| regex_problem(r, e))?,
            ),
            None => return Err(Problem::Unknown),
        })
    }

    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            StringMatcher::Exact(v) => value == &v[..],
            StringMatcher::Prefix(p) => value.starts_with(p),
            StringMatcher::Regex(r) => r.is_match(value),
        }
    }
}

/// A request path matcher (`PathMatch`) with Gateway API semantics. A prefix match also says
/// what it matched, for `ReplacePrefixMatch`.
#[derive(Clone, Debug)]
pub enum PathMatcher {
    Exact(Box<str>),
    /// Segment-wise; stored without its trailing `/` (`/` itself is stored as ``), so it
    /// matches when the path equals it or continues with `/`.
    Prefix(Box<str>),
    /// Anchored to the whole path.
    Regex(regex::Regex),
}

/// What a path match captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathCapture<'a> {
    /// An exact or regex match: nothing a prefix rewrite could use.
    Whole,
    /// A prefix match: the matched prefix, without trailing `/` (`` for `/`).
    Prefix(&'a str),
}

impl PathMatcher {
    /// The match Gateway API applies when a match names no path: prefix `/`.
    pub fn any() -> Self {
        PathMatcher::Prefix("".into())
    }

    /// Compiles a `PathMatch`; exact and prefix values must be paths (start with `/`).
    pub fn compile(m: &pb::PathMatch) -> Result<Self, Problem> {
        Ok(match &m.kind {
            Some(PathKind::Exact(v)) => {
                check_path(v)?;
                PathMatcher::Exact(v.as_str().into())
            }
            Some(PathKind::Prefix(v)) => {
                check_path(v)?;
                PathMatcher::Prefix(v.trim_end_matches('/').into())
            }
            Some(PathKind::Regex(r)) => PathMatcher::Regex(
                regex::RegexBuilder::new(&anchored(r))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| regex_problem(r, e))?,
            ),
            None => return Err(Problem::Unknown),
        })
    }

    /// Matches a path (without query); `Some` says what was captured.
    pub fn matches<'s>(&'s self, path: &str) -> Option<PathCapture<'s>> {
        match self {
            PathMatcher::Exact(v) => (path == &**v).then_some(PathCapture::Whole),
            PathMatcher::Prefix(p) => {
                let rest = path.strip_prefix(&**p)?;
                (rest.is_empty() || rest.starts_with('/')).then_some(PathCapture::Prefix(p))
            }
            PathMatcher::Regex(r) => r.is_match(path).then_some(PathCapture::Whole),
        }
    }
}

/// A configured path must be an absolute path a URI can carry.
pub(crate) fn check_path(p: &str) -> Result<(), Problem> {
    if p.starts_with('/') && http::uri::PathAndQuery::try_from(p).is_ok() && !p.contains('?') {
        Ok(())
    } else {
        Err(Problem::Path(p.to_string()))
    }
}

/// Istio's string pattern for policy values: `*` (any non-empty value), `prefix*`,
/// `*suffix`, or an exact value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// `*`: present and non-empty.
    Presence,
}

impl Pattern {
    /// Parses a policy value. Path templates (`{*}`, `{**}`) are not supported and are a
    /// [`Problem`] rather than a literal that would silently never match.
    pub fn parse(value: &str) -> Result<Self, Problem> {
        if value.contains("{*}") || value.contains("{**}") {
            return Err(Problem::Pattern(value.to_string()));
        }
        Ok(if value == "*" {
            Pattern::Presence
        } else if let Some(suffix) = value.strip_prefix('*') {
            Pattern::Suffix(suffix.into())
        } else if let Some(prefix) = value.strip_suffix('*') {
            Pattern::Prefix(prefix.into())
        } else {
            Pattern::Exact(value.into())
        })
    }

    /// As [`Pattern::parse`], for values compared without regard to ASCII case (hosts).
    pub fn parse_ignore_case(value: &str) -> Result<Self, Problem> {
        Self::parse(&value.to_ascii_lowercase())
    }

    /// Case-sensitive match; an absent value is matched as the empty string.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(v) => value == &**v,
            Pattern::Prefix(p) => value.starts_with(&**p),
            Pattern::Suffix(s) => value.ends_with(&**s),
            Pattern::Presence => !value.is_empty(),
        }
    }

    /// Match ignoring ASCII case; the pattern must come from [`Pattern::parse_ignore_case`].
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        fn starts(v: &str, p: &str) -> bool {
            v.len() >= p.len() && v.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
        }
        fn ends(v: &str, s: &str) -> bool {
            v.len() >= s.len()
                && v.as_bytes()[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
        }
        match self {
            Pattern::Exact(v) => value.eq_ignore_ascii_case(v),
            Pattern::Prefix(p) => starts(value, p),
            Pattern::Suffix(s) => ends(value, s),
            Pattern::Presence => !value.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(kind: StringKind) -> StringMatcher {
        StringMatcher::compile(&pb::StringMatch { kind: Some(kind) }).unwrap()
    }

    fn pm(kind: PathKind) -> PathMatcher {
        PathMatcher::compile(&pb::PathMatch { kind: Some(kind) }).unwrap()
    }

    #[test]
    fn string_match_kinds() {
        let exact = sm(StringKind::Exact("v1".into()));
        assert!(exact.matches(b"v1") && !exact.matches(b"v12") && !exact.matches(b"V1"));
        let prefix = sm(StringKind::Prefix("v1".into()));
        assert!(prefix.matches(b"v1") && prefix.matches(b"v12") && !prefix.matches(b"xv1"));
        // Anchored: a regex that would find a substring must match the whole value.
        let re = sm(StringKind::Regex("v[0-9]".into()));
        assert!(re.matches(b"v1") && !re.matches(b"v12") && !re.matches(b"xv1"));
        let alt = sm(StringKind::Regex("a|b".into()));
        assert!(alt.matches(b"a") && !alt.matches(b"ab"));
        assert!(!re.matches(b"v\xff"));
    }

    #[test]
    fn bad_regex_and_unknown_kind_are_problems() {
        let e = StringMatcher::compile(&pb::StringMatch {
            kind: Some(StringKind::Regex("(".into())),
        })
        .unwrap_err();
        assert!(matches!(e, Problem::Regex { ref pattern, .. } if pattern == "("));
        assert_eq!(
            StringMatcher::compile(&pb::StringMatch { kind: None }).unwrap_err(),
            Problem::Unknown
        );
        assert!(
            PathMatcher::compile(&pb::PathMatch {
                kind: Some(PathKind::Prefix("foo".into()))
            })
            .is_err()
        );
    }

    #[test]
    fn path_prefix_is_segment_wise() {
        let p = pm(PathKind::Prefix("/abc".into()));
        for ok in ["/abc", "/abc/", "/abc/def"] {
            assert_eq!(p.matches(ok), Some(PathCapture::Prefix("/abc")), "{ok}");
        }
        for no in ["/abcd", "/ab", "/", "/x/abc"] {
            assert_eq!(p.matches(no), None, "{no}");
        }
        // A trailing slash in the prefix is ignored.
        let p = pm(PathKind::Prefix("/abc/".into()));
        assert!(p.matches("/abc").is_some() && p.matches("/abc/d").is_some());
        assert!(p.matches("/abcd").is_none());
        // `/` matches everything.
        let root = pm(PathKind::Prefix("/".into()));
        assert_eq!(root.matches("/anything"), Some(PathCapture::Prefix("")));
        assert_eq!(root.matches("/"), Some(PathCapture::Prefix("")));
    }

    #[test]
    fn path_exact_and_regex() {
        let e = pm(PathKind::Exact("/a".into()));
        assert_eq!(e.matches("/a"), Some(PathCapture::Whole));
        assert_eq!(e.matches("/a/"), None);
        let r = pm(PathKind::Regex("/v[0-9]+/.*".into()));
        assert!(r.matches("/v1/x").is_some());
        assert!(r.matches("/api/v1/x").is_none());
    }

    #[test]
    fn istio_patterns() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc*", "abcd", true),
            ("abc*", "abc", true),
            ("abc*", "xabc", false),
            ("*abc", "xabc", true),
            ("*abc", "abcx", false),
            ("*", "x", true),
            ("*", "", false),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                Pattern::parse(pattern).unwrap().matches(value),
                want,
                "{pattern} {value}"
            );
        }
        assert!(Pattern::parse("/foo/{*}/bar").is_err());
        let host = Pattern::parse_ignore_case("*.Example.com").unwrap();
        assert!(host.matches_ignore_case("API.example.COM"));
        assert!(!host.matches_ignore_case("example.org"));
        let exact = Pattern::parse_ignore_case("Reviews").unwrap();
        assert!(exact.matches_ignore_case("reviews") && !exact.matches_ignore_case("reviewsx"));
    }
}
