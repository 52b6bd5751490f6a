//! lastcall's own HTTP endpoint: `/readyz`, `/livez`, on a mio listener in the one event loop.
//!
//! Requests are parsed with httparse from a fixed per-connection buffer; responses are
//! written without blocking. A connection never holds more than [`MAX_HEAD`] bytes of input
//! and [`MAX_OUT`] bytes of pending output, and there are at most [`MAX_CONNS`] of them.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

/// The largest request head accepted; a longer one gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Open connections beyond this are accepted and closed at once, so the backlog never fills.
pub const MAX_CONNS: usize = 256;
/// Pending output beyond this means the client does not read: it is dropped.
const MAX_OUT: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

/// What the endpoint reports; a snapshot taken from the state machine.
#[derive(Clone, Copy, Debug)]
pub struct Health {
    pub ready: bool,
    pub live: bool,
}

/// One answer, before it is serialised.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: &'static str,
    pub allow: bool,
    /// The connection closes after this response.
    pub close: bool,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl Response {
    fn error(status: u16) -> Response {
        Response {
            status,
            body: "",
            allow: false,
            close: true,
        }
    }

    fn write_to(&self, head_only: bool, out: &mut Vec<u8>) {
        let body = if self.body.is_empty() {
            reason(self.status)
        } else {
            self.body
        };
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            body.len() + 1
        );
        if self.allow {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(body.as_bytes());
            out.push(b'\n');
        }
    }
}

/// What a parsed request asks for, decided without any I/O.
pub fn route(method: &str, path: &str, keep_alive: bool, health: Health) -> Response {
    let path = path.split('?').next().unwrap_or(path);
    let (ok, body_ok, body_bad) = match path {
        "/readyz" => (health.ready, "ready", "not ready"),
        "/livez" => (health.live, "alive", "not alive"),
        _ => {
            return Response {
                status: 404,
                body: "",
                allow: false,
                close: !keep_alive,
            };
        }
    };
    if method != "GET" && method != "HEAD" {
        return Response {
            status: 405,
            body: "",
            allow: true,
            close: !keep_alive,
        };
    }
    Response {
        status: if ok { 200 } else { 503 },
        body: if ok { body_ok } else { body_bad },
        allow: false,
        close: !keep_alive,
    }
}

struct Conn {
    stream: TcpStream,
    input: Box<[u8; MAX_HEAD]>,
    len: usize,
    out: Vec<u8>,
    /// Close once `out` is written.
    closing: bool,
}

pub struct Endpoint {
    listener: TcpListener,
    first_token: usize,
    conns: Vec<Option<Conn>>,
    /// `/readyz` was requested since the last [`Endpoint::take_probed`].
    probed: bool,
}

impl Endpoint {
    /// Binds the listener; `first_token` and the tokens after it are the connections'.
    pub fn bind(addr: SocketAddr, first_token: usize) -> io::Result<Endpoint> {
        Ok(Endpoint {
            listener: TcpListener::bind(addr)?,
            first_token,
            conns: Vec::new(),
            probed: false,
        })
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.first_token && token.0 - self.first_token < self.conns.len()
    }

    pub fn take_probed(&mut self) -> bool {
        std::mem::take(&mut self.probed)
    }

    /// Accepts until the backlog is empty.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the connection stays in the backlog; try later.
                    log::debug!("accept failed: {e}");
                    return;
                }
            };
            let open = self.conns.iter().filter(|c| c.is_some()).count();
            if open >= MAX_CONNS {
                continue; // dropped: closed at once
            }
            let slot = match self.conns.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            let token = Token(self.first_token + slot);
            if registry
                .register(&mut stream, token, Interest::READABLE)
                .is_ok()
            {
                self.conns[slot] = Some(Conn {
                    stream,
                    input: Box::new([0; MAX_HEAD]),
                    len: 0,
                    out: Vec::new(),
                    closing: false,
                });
            }
        }
    }

    /// Handles readiness on a connection's token.
    pub fn on_event(&mut self, registry: &Registry, event: &Event, health: Health) {
        let slot = event.token().0 - self.first_token;
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let mut alive = true;
        if event.is_readable() || event.is_read_closed() {
            alive = read_requests(conn, health, &mut self.probed);
        }
        if alive {
            alive = flush(conn);
        }
        if alive {
            let interest = if conn.out.is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            alive = registry
                .reregister(&mut conn.stream, event.token(), interest)
                .is_ok();
        }
        if !alive && let Some(mut conn) = self.conns[slot].take() {
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}

/// Reads until WouldBlock and answers every complete request. False: close the connection.
fn read_requests(conn: &mut Conn, health: Health, probed: &mut bool) -> bool {
    loop {
        if conn.closing {
            return true;
        }
        if conn.len == MAX_HEAD {
            answer_error(conn, 431);
            return true;
        }
        match conn.stream.read(&mut conn.input[conn.len..]) {
            Ok(0) => return false,
            Ok(n) => {
                conn.len += n;
                answer_complete(conn, health, probed);
                if conn.out.len() > MAX_OUT {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Answers every complete request in the buffer (pipelining), keeping a partial one.
fn answer_complete(conn: &mut Conn, health: Health, probed: &mut bool) {
    while conn.len > 0 && !conn.closing {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let used = match req.parse(&conn.input[..conn.len]) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => return,
            Err(httparse::Error::TooManyHeaders) => return answer_error(conn, 431),
            Err(_) => return answer_error(conn, 400),
        };
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return answer_error(conn, 400);
        };
        // A request body is not expected; one would be misread as the next request.
        if req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("content-length") && h.value != b"0"
                || h.name.eq_ignore_ascii_case("transfer-encoding")
        }) {
            return answer_error(conn, 400);
        }
        let connection = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value.to_ascii_lowercase());
        let keep_alive = match connection.as_deref() {
            Some(b"close") => false,
            Some(b"keep-alive") => true,
            _ => version == 1,
        };
        if path.split('?').next() == Some("/readyz") {
            *probed = true;
        }
        let response = route(method, path, keep_alive, health);
        response.write_to(method == "HEAD", &mut conn.out);
        conn.closing = response.close;
        conn.input.copy_within(used..conn.len, 0);
        conn.len -= used;
    }
}

fn answer_error(conn: &mut Conn, status: u16) {
    Response::error(status).write_to(false, &mut conn.out);
    conn.closing = true;
    conn.len = 0;
}

/// Writes what is pending without blocking. False: close the connection.
fn flush(conn: &mut Conn) -> bool {
    while !conn.out.is_empty() {
        match conn.stream.write(&conn.out) {
            Ok(0) => return false,
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    !conn.closing
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: Health = Health {
        ready: true,
        live: true,
    };
    const DRAINING: Health = Health {
        ready: false,
        live: true,
    };

    fn check(method: &str, path: &str, health: Health, status: u16) {
        assert_eq!(
            route(method, path, true, health).status,
            status,
            "{method} {path}"
        );
    }

    #[test]
    fn routes() {
        check("GET", "/readyz", UP, 200);
        check("HEAD", "/readyz", UP, 200);
        check("GET", "/readyz?x=1", UP, 200);
        check("GET", "/readyz", DRAINING, 503);
        check("GET", "/livez", DRAINING, 200);
        check(
            "GET",
            "/livez",
            Health {
                ready: false,
                live: false,
            },
            503,
        );
        check("GET", "/nope", UP, 404);
        check("POST", "/readyz", UP, 405);
        assert!(route("POST", "/readyz", true, UP).allow);
    }
}
