//! Request path canonicalization, done once per request before routing and authorization so
//! that `/admin/../public` cannot be routed one way and authorized another.

use std::borrow::Cow;

/// A `.` or `..` segment, plain or percent-encoded (`%2e`, `.%2E`, ...).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dots {
    None,
    One,
    Two,
}

fn dots(segment: &str) -> Dots {
    let b = segment.as_bytes();
    let dot_at = |i: usize| -> Option<usize> {
        match b.get(i)? {
            b'.' => Some(i + 1),
            b'%' if b.len() >= i + 3
                && b[i + 1] == b'2'
                && b[i + 2].eq_ignore_ascii_case(&b'e') =>
            {
                Some(i + 3)
            }
            _ => None,
        }
    };
    match dot_at(0) {
        Some(i) if i == b.len() => Dots::One,
        Some(i) => match dot_at(i) {
            Some(j) if j == b.len() => Dots::Two,
            _ => Dots::None,
        },
        None => Dots::None,
    }
}

/// Removes `.` and `..` segments (RFC 3986 §5.2.4, also in their percent-encoded forms),
/// as Istio's default (`BASE`) path normalization does; `..` never climbs above `/`.
/// Repeated slashes and other escapes are kept. Borrows when nothing changes, which is
/// nearly always; a path not starting with `/` (`*`) is returned as is.
///
/// The proxy should forward the normalized path, as Envoy does, so the upstream sees what
/// the policies saw.
pub fn normalize(path: &str) -> Cow<'_, str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Cow::Borrowed(path);
    };
    if rest.split('/').all(|s| dots(s) == Dots::None) {
        return Cow::Borrowed(path);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match dots(segment) {
            Dots::None => out.push(segment),
            Dots::One => {}
            Dots::Two => {
                out.pop();
            }
        }
        if i == last && dots(segment) != Dots::None {
            // `/a/b/..` names the directory `/a/`.
            out.push("");
        }
    }
    let mut normalized = String::with_capacity(path.len());
    normalized.push('/');
    normalized.push_str(&out.join("/"));
    Cow::Owned(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_dot_segments() {
        let cases = [
            ("/a/b/c", "/a/b/c"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/.%2E/admin", "/admin"),
            ("/a//b", "/a//b"),
            ("/a/.b/..c", "/a/.b/..c"),
            ("/", "/"),
            ("*", "*"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{input}");
        }
        assert!(matches!(normalize("/a/b"), Cow::Borrowed(_)));
    }
}
