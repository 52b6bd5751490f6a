//! The `--on-exit` hooks: what each is, and the HTTP `POST` that tells a sidecar the app is
//! done (Envoy's `/quitquitquit`, Linkerd's `/shutdown`).
//!
//! The loop runs the hooks one after the other when the machine says lastcall exits; a POST
//! here blocks, but never longer than the deadline it is given: the connect, every write and
//! every read are bounded by what is left of it. Nothing a sidecar answers changes lastcall's
//! exit status; an answer is only told.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::checks::Check;

/// The most of an answer that is read: its status line is all that is told.
const MAX_ANSWER: usize = 4 * 1024;
/// The most hooks one lastcall runs.
pub const MAX_HOOKS: usize = 64;

/// One hook, in the order given: the `--on-exit` URLs first, then the `--on-exit-exec`
/// commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `--on-exit URL`: `POST` to a plain `http://` URL, with an empty body.
    Post { url: String, addr: SocketAddr, host: String, path: String },
    /// `--on-exit-exec CMD`: `sh -c CMD`.
    Exec { command: String },
}

impl Hook {
    /// `http://HOST[:PORT][/PATH]`, as `--ready-http` takes it; the host is resolved once, now.
    pub fn post(url: &str) -> Result<Hook, String> {
        match Check::http(url) {
            Ok(Check::Http { url, addr, host, path }) => Ok(Hook::Post { url, addr, host, path }),
            Ok(_) => Err("expected a URL like http://127.0.0.1:15020/quitquitquit".to_string()),
            Err(e) => Err(e
                .replace("readiness checks use", "--on-exit uses")
                .replace("http://127.0.0.1:8080/healthz", "http://127.0.0.1:15020/quitquitquit")),
        }
    }

    pub fn exec(command: &str) -> Result<Hook, String> {
        if command.trim().is_empty() {
            return Err("the command is empty".to_string());
        }
        Ok(Hook::Exec { command: command.to_string() })
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hook::Post { url, .. } => write!(f, "POST {url}"),
            Hook::Exec { command } => write!(f, "exec '{command}'"),
        }
    }
}

/// How a `POST` went.
#[derive(Debug, PartialEq, Eq)]
pub enum Posted {
    /// The sidecar answered: its status line (`HTTP/1.1 200 OK`).
    Answered(String),
    /// Nothing listens there (connection refused): the sidecar is already gone.
    Gone,
    /// It did not answer by the deadline.
    TimedOut,
    /// Anything else that went wrong.
    Failed(String),
}

/// `POST`s to `addr` and reads the status line, all by `deadline`.
pub fn post(addr: SocketAddr, host: &str, path: &str, deadline: Instant) -> Posted {
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut stream = match TcpStream::connect_timeout(&addr, left().max(Duration::from_millis(1))) {
        Ok(stream) => stream,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Posted::Gone,
        Err(e) => return failed(e),
    };
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lastcall\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    let mut written = 0;
    let bytes = request.as_bytes();
    while written < bytes.len() {
        if let Err(e) = stream.set_write_timeout(Some(left().max(Duration::from_millis(1)))) {
            return failed(e);
        }
        match stream.write(&bytes[written..]) {
            Ok(0) => return Posted::Failed("the connection was closed".to_string()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return failed(e),
        }
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(line) = status_line(&answer) {
            return Posted::Answered(line);
        }
        if answer.len() >= MAX_ANSWER || left().is_zero() {
            break;
        }
        if let Err(e) = stream.set_read_timeout(Some(left().max(Duration::from_millis(1)))) {
            return failed(e);
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return failed(e),
        }
    }
    if answer.len() >= MAX_ANSWER {
        return Posted::Failed(format!("no status line in the first {MAX_ANSWER} bytes"));
    }
    if left().is_zero() {
        return Posted::TimedOut;
    }
    // A sidecar that quits as it is told may close before it answers.
    Posted::Failed("the connection was closed without an answer".to_string())
}

fn failed(e: io::Error) -> Posted {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Posted::TimedOut,
        io::ErrorKind::ConnectionRefused => Posted::Gone,
        _ => Posted::Failed(e.to_string()),
    }
}

/// The answer's first line, once it is whole, without its line end.
fn status_line(answer: &[u8]) -> Option<String> {
    let end = answer.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&answer[..end]).into_owned();
    Some(line.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn hooks_parse() {
        let Ok(Hook::Post { addr, path, .. }) = Hook::post("http://127.0.0.1:15020/quitquitquit")
        else {
            panic!("valid URL rejected");
        };
        assert_eq!((addr.port(), path.as_str()), (15020, "/quitquitquit"));
        assert_eq!(
            Hook::post("https://127.0.0.1/").unwrap_err(),
            "https is not supported: --on-exit uses plain HTTP"
        );
        assert_eq!(
            Hook::post("127.0.0.1:15020").unwrap_err(),
            "expected a URL like http://127.0.0.1:15020/quitquitquit"
        );
        assert!(
            Hook::post("http://no-such-host.invalid/")
                .unwrap_err()
                .starts_with("cannot resolve no-such-host.invalid:80 (")
        );
        assert!(Hook::exec(" ").is_err());
        assert_eq!(Hook::exec("kill 1").unwrap().to_string(), "exec 'kill 1'");
    }

    #[test]
    fn a_post_is_answered_refused_or_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
            String::from_utf8(head).unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let posted = post(addr, "127.0.0.1", "/quitquitquit", deadline);
        assert_eq!(posted, Posted::Answered("HTTP/1.1 200 OK".into()));
        assert!(server.join().unwrap().starts_with("POST /quitquitquit HTTP/1.1\r\n"));

        // A closed port: gone.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(post(closed, "x", "/", Instant::now() + Duration::from_secs(5)), Posted::Gone);

        // An answer with no line end, longer than is read: said as it is, at once.
        let chatty = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = chatty.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = chatty.accept().unwrap();
            let _ = conn.read(&mut [0u8; 512]);
            let _ = conn.write_all(&[b'x'; 2 * MAX_ANSWER]);
            // Held open until the client is done.
            let _ = conn.read(&mut [0u8; 1]);
        });
        let start = Instant::now();
        let posted = post(addr, "x", "/", start + Duration::from_secs(5));
        assert_eq!(
            posted,
            Posted::Failed(format!("no status line in the first {MAX_ANSWER} bytes"))
        );
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        server.join().unwrap();

        // A listener that never answers: the deadline holds.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let posted =
            post(silent.local_addr().unwrap(), "x", "/", start + Duration::from_millis(200));
        assert_eq!(posted, Posted::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }
}
