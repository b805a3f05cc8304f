//! Protocol detection for ports declared `DETECT`: from the first bytes a client sends, tell
//! HTTP/2 with prior knowledge, HTTP/1.x, or anything else (passed through as TCP).

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods accepted at the start of an HTTP/1.x request line.
const METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// Past this many bytes of a plausible request line without its end, the stream is taken as
/// HTTP/1 (the HTTP server then refuses a line that long, rather than it bypassing L7 as TCP).
pub const MAX_REQUEST_LINE: usize = 8192;

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    Tcp,
    /// The bytes so far are a prefix of HTTP: read more (with a timeout, since server-first
    /// protocols send nothing; then treat the stream as TCP).
    NeedMore,
}

/// Classifies a stream from the bytes read so far (peeked, not consumed).
pub fn detect(buf: &[u8]) -> Detected {
    if buf.is_empty() {
        return Detected::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Detected::Http2
        } else {
            Detected::NeedMore
        };
    }
    http1(buf)
}

/// `METHOD SP request-target SP HTTP/1.[01] CRLF` (a bare LF accepted).
fn http1(buf: &[u8]) -> Detected {
    // The method.
    let Some(sp) = buf.iter().position(|&b| b == b' ') else {
        let prefix_of_method = buf.len() < 8 && METHODS.iter().any(|m| m.starts_with(buf));
        return if prefix_of_method {
            Detected::NeedMore
        } else {
            Detected::Tcp
        };
    };
    if !METHODS.contains(&&buf[..sp]) {
        return Detected::Tcp;
    }
    // The request target: visible ASCII, non-empty.
    let rest = &buf[sp + 1..];
    let Some(sp2) = rest.iter().position(|&b| b == b' ') else {
        if !rest.iter().all(|b| b.is_ascii_graphic()) {
            return Detected::Tcp;
        }
        return if buf.len() > MAX_REQUEST_LINE {
            Detected::Http1
        } else {
            Detected::NeedMore
        };
    };
    if sp2 == 0 || !rest[..sp2].iter().all(|b| b.is_ascii_graphic()) {
        return Detected::Tcp;
    }
    // The version and line end.
    let version = &rest[sp2 + 1..];
    const HTTP1: &[u8] = b"HTTP/1.";
    let n = version.len().min(HTTP1.len());
    if version[..n] != HTTP1[..n] {
        return Detected::Tcp;
    }
    match version.get(HTTP1.len()..) {
        None | Some([]) => Detected::NeedMore,
        Some([b'0' | b'1']) | Some([b'0' | b'1', b'\r']) => Detected::NeedMore,
        Some([b'0' | b'1', b'\n', ..]) | Some([b'0' | b'1', b'\r', b'\n', ..]) => Detected::Http1,
        Some(_) => Detected::Tcp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_preface_and_its_prefixes() {
        assert_eq!(detect(H2_PREFACE), Detected::Http2);
        let mut with_frames = H2_PREFACE.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(detect(&with_frames), Detected::Http2);
        for n in 1..H2_PREFACE.len() {
            assert_eq!(detect(&H2_PREFACE[..n]), Detected::NeedMore, "{n}");
        }
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n\r\nXX"), Detected::Tcp);
    }

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /api?x=1 HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"GET / HTTP/1.1\n",
        ] {
            assert_eq!(
                detect(line),
                Detected::Http1,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let full = b"DELETE /x HTTP/1.1\r\n";
        for n in 1..full.len() {
            assert_eq!(detect(&full[..n]), Detected::NeedMore, "{n}");
        }
    }

    #[test]
    fn everything_else_is_tcp() {
        for bytes in [
            &b"\x16\x03\x01\x02\x00"[..], // TLS ClientHello
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"get / HTTP/1.1\r\n", // methods are case-sensitive
            b"GET / HTTP/2.0\r\n",
            b"GET  / HTTP/1.1\r\n", // empty target
            b"GET / FTP/1.1\r\n",
            b"GETX / HTTP/1.1\r\n",
            b"GET / HTTP/1.2\r\n",
            b"GET /\x00 HTTP/1.1\r\n",
            b"HELLO",
            b"*1\r\n$4\r\nPING\r\n", // redis
        ] {
            assert_eq!(
                detect(bytes),
                Detected::Tcp,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(detect(b""), Detected::NeedMore);
    }

    #[test]
    fn long_request_target_is_http() {
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LINE));
        assert_eq!(detect(&line), Detected::Http1);
        assert_eq!(detect(&line[..100]), Detected::NeedMore);
    }
}
