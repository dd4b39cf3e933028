//! The `metrics` service's HTTP/1.1: a request head in, which answer it gets out.
//!
//! A scraper sends `GET /metrics HTTP/1.1`, a few headers and a blank line, and keeps the
//! connection open for the next scrape. That is all this service has to understand, so this is
//! a request-head reader, not a web server: [`httparse`] (the standard sans-I/O HTTP/1.x
//! parser, the one hyper uses) reads the head out of the bytes received so far, and
//! [`read_request`] says what to answer:
//!
//! * `GET /metrics` (a query string is allowed and ignored): 200 with the exposition;
//! * another path: 404; another method: 405 (with `Allow: GET`); a head that is malformed or
//!   passes [`MAX_HEAD_BYTES`]: 400, and the connection is closed.
//!
//! Keep-alive follows HTTP/1.1: the connection stays open unless the client says
//! `Connection: close` (or speaks HTTP/1.0 without `Connection: keep-alive`). A request with a
//! body (`Content-Length` above 0, or any `Transfer-Encoding`) is answered and then the
//! connection is closed: reading and throwing away a body is not worth its bugs here, and a
//! scraper never sends one. `HEAD` is another method (405): the contract names `GET` alone;
//! its answer says the length of its body but does not carry it (RFC 9112 6.3).

/// The most a request head may take, request line and headers included (8 KiB, as nginx's
/// and Apache's defaults): more without its blank line is a 400.
pub const MAX_HEAD_BYTES: usize = 8192;

/// The most headers a request may have (a scraper sends four or five).
const MAX_HEADERS: usize = 32;

/// Which answer a request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`: 200 and the exposition.
    Metrics,
    /// Another path: 404.
    NotFound,
    /// Another method: 405.
    MethodNotAllowed,
}

/// What the bytes received so far hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Not a whole head yet (and under [`MAX_HEAD_BYTES`]): read on.
    Partial,
    /// A whole head of `len` bytes (the blank line included).
    Complete {
        /// How many bytes of the input the head took.
        len: usize,
        /// The answer it gets.
        route: Route,
        /// Whether the connection stays open after the answer.
        keep_alive: bool,
        /// Whether the answer carries its body: not for `HEAD`, whose answer never has one
        /// (RFC 9112 6.3), or a keep-alive client would read the body as its next answer.
        with_body: bool,
    },
    /// Malformed, or too long: 400, then close.
    Bad,
}

/// Reads the request head at the start of `input`.
pub fn read_request(input: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(input) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => {
            let route = match (request.method, request.path) {
                (Some("GET"), Some(path)) if path_of(path) == "/metrics" => Route::Metrics,
                (Some("GET"), _) => Route::NotFound,
                _ => Route::MethodNotAllowed,
            };
            let keep_alive = keeps_alive(request.version, request.headers);
            Request::Complete {
                len,
                route,
                keep_alive,
                with_body: request.method != Some("HEAD"),
            }
        }
        Ok(httparse::Status::Partial) if input.len() < MAX_HEAD_BYTES => Request::Partial,
        _ => Request::Bad,
    }
}

/// The path without its query string.
fn path_of(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

/// Whether the connection may stay open after answering this request.
fn keeps_alive(version: Option<u8>, headers: &[httparse::Header<'_>]) -> bool {
    let mut keep_alive = version == Some(1);
    for header in headers {
        let value = || String::from_utf8_lossy(header.value).to_ascii_lowercase();
        if header.name.eq_ignore_ascii_case("connection") {
            for token in value().split(',').map(str::trim) {
                match token {
                    "close" => return false,
                    "keep-alive" => keep_alive = true,
                    _ => {}
                }
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            || (header.name.eq_ignore_ascii_case("content-length") && value().trim() != "0")
        {
            return false; // a body follows, which is not read
        }
    }
    keep_alive
}

/// Appends the response head for `status` with a body of `body_len` bytes of `content_type`.
pub fn write_head(
    out: &mut Vec<u8>,
    status: Status,
    content_type: &str,
    body_len: usize,
    keep_alive: bool,
) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\n",
        status.line()
    );
    if status == Status::MethodNotAllowed {
        out.extend_from_slice(b"Allow: GET\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The statuses this service answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 200: the exposition follows.
    Ok,
    /// 400: the request could not be read.
    BadRequest,
    /// 404: no such path.
    NotFound,
    /// 405: only `GET` is served.
    MethodNotAllowed,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
        }
    }

    /// The status of a route's answer.
    pub fn of(route: Route) -> Status {
        match route {
            Route::Metrics => Status::Ok,
            Route::NotFound => Status::NotFound,
            Route::MethodNotAllowed => Status::MethodNotAllowed,
        }
    }

    /// The short plain-text body of an error status.
    pub fn error_body(self) -> &'static str {
        match self {
            Status::Ok => "",
            Status::BadRequest => "bad request\n",
            Status::NotFound => "not found: the metrics are at /metrics\n",
            Status::MethodNotAllowed => "method not allowed: only GET\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(route: Route, keep_alive: bool, len: usize) -> Request {
        Request::Complete {
            len,
            route,
            keep_alive,
            with_body: true,
        }
    }

    #[test]
    fn a_scrape_is_a_metrics_request_that_keeps_the_connection() {
        let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n";
        assert_eq!(
            read_request(head),
            complete(Route::Metrics, true, head.len())
        );
        let query = b"GET /metrics?x=1 HTTP/1.1\r\n\r\n";
        assert_eq!(
            read_request(query),
            complete(Route::Metrics, true, query.len())
        );
    }

    #[test]
    fn only_the_head_is_taken_and_a_partial_head_waits() {
        let two = b"GET /metrics HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
        assert_eq!(read_request(two), complete(Route::Metrics, true, 25));
        assert_eq!(
            read_request(&two[25..]),
            complete(Route::NotFound, true, 19)
        );
        for cut in 0..25 {
            assert_eq!(read_request(&two[..cut]), Request::Partial, "cut at {cut}");
        }
    }

    #[test]
    fn other_paths_and_methods() {
        let post = b"POST /metrics HTTP/1.1\r\n\r\n";
        assert_eq!(
            read_request(post),
            complete(Route::MethodNotAllowed, true, post.len())
        );
        let head = b"HEAD /metrics HTTP/1.1\r\n\r\n";
        assert!(matches!(
            read_request(head),
            Request::Complete {
                route: Route::MethodNotAllowed,
                with_body: false,
                ..
            }
        ));
        let root = b"GET / HTTP/1.1\r\n\r\n";
        assert!(matches!(
            read_request(root),
            Request::Complete {
                route: Route::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        let cases: [(&[u8], bool); 6] = [
            (b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (
                b"GET /metrics HTTP/1.1\r\nconnection: Keep-Alive, Close\r\n\r\n",
                false,
            ),
            (b"GET /metrics HTTP/1.0\r\n\r\n", false),
            (
                b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
            (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n", false),
            (b"GET /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", true),
        ];
        for (head, keep_alive) in cases {
            assert_eq!(
                read_request(head),
                complete(Route::Metrics, keep_alive, head.len()),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn garbage_and_overlong_heads_are_bad() {
        assert_eq!(read_request(b"\x16\x03\x01\x02\x00\x01"), Request::Bad);
        assert_eq!(read_request(b"GET /metrics HTTP/9.9\r\n\r\n"), Request::Bad);
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(read_request(long.as_bytes()), Request::Bad);
        let just_over = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES - 29)
        );
        assert_eq!(just_over.len(), MAX_HEAD_BYTES + 1);
        assert_eq!(read_request(just_over.as_bytes()), Request::Bad);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET /metrics HTTP/1.1\r\n{many}\r\n");
        assert_eq!(read_request(many.as_bytes()), Request::Bad);
    }

    #[test]
    fn response_heads() {
        let mut out = Vec::new();
        write_head(&mut out, Status::Ok, "text/plain; version=0.0.4", 12, true);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: 12\r\n\r\n"
        );
        out.clear();
        write_head(&mut out, Status::MethodNotAllowed, "text/plain", 0, false);
        assert_eq!(
            out,
            &b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\
               Allow: GET\r\nConnection: close\r\n\r\n"[..]
        );
    }
}
