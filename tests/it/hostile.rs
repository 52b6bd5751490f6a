//! The endpoint against clients that misbehave: garbage, oversized heads, stalled and
//! trickled requests, pipelines, clients that never read, more connections than allowed, and
//! a shutdown with such clients still connected. After each, lastcall must still answer
//! `/readyz` and its child must be untouched.
//!
//! Every socket here is a plain `std::net::TcpStream` on loopback with read and write
//! timeouts, so a lastcall that misbehaves fails a test instead of hanging it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    ProcessGuard, Running, TIMEOUT, TestDir, descendants, http, proc_state, spawn_listening,
    unix_nanos, wait_until,
};

/// How long lastcall may take to close a connection it is meant to close "at once".
const PROMPT: Duration = Duration::from_secs(5);

/// A child that stays up: its pid in `$DIR/pid`, then `sleep`, which has the same pid.
const SLEEPER: &str = "mark pid $$; exec sleep 600";

/// lastcall on a port of its own, and its child.
struct Up {
    lastcall: Running,
    port: u16,
    child: i32,
    /// Kills the child should lastcall exit and leave it behind.
    _child_guard: ProcessGuard,
}

/// Starts lastcall listening on 127.0.0.1 with `--prestop-delay 0s` unless `args` set it,
/// the child running `script`, which must `mark pid $$`.
fn start(dir: &TestDir, args: &[&str], script: &str) -> Up {
    let mut args = args.to_vec();
    if !args.contains(&"--prestop-delay") {
        args.extend(["--prestop-delay", "0s"]);
    }
    let (lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall().args(["--listen", &format!("127.0.0.1:{port}")]).args(&args).sh(script)
        },
        || dir.exists("pid"),
    );
    let child: i32 = dir.read("pid").trim().parse().expect("the child's pid in $DIR/pid");
    Up { lastcall, port, child, _child_guard: ProcessGuard::new(child) }
}

impl Up {
    /// lastcall still runs, its child is still its child and not a zombie, and a fresh
    /// connection gets 200 from `/readyz`.
    #[track_caller]
    fn assert_intact(&mut self) {
        assert!(
            self.lastcall.try_wait().is_none(),
            "lastcall exited: {:?}",
            self.lastcall.try_wait()
        );
        let state = proc_state(self.child);
        assert!(matches!(state, Some(s) if s != 'Z'), "the child is gone: state {state:?}");
        assert!(
            descendants(self.lastcall.pid()).contains(&self.child),
            "the child {} is no longer under lastcall",
            self.child
        );
        let reply = http(self.port, "GET", "/readyz");
        assert_eq!(reply.status, 200, "/readyz after the scenario: {reply:?}");
    }

    fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    /// The value of one sample line of `/metrics` (exact series), on a fresh connection.
    #[track_caller]
    fn metric(&self, series: &str) -> f64 {
        let reply = http(self.port, "GET", "/metrics");
        assert_eq!(reply.status, 200, "{reply:?}");
        sample(&reply.body, series)
    }
}

/// The value of the sample line for `series` in a `/metrics` text.
#[track_caller]
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}\n{text}"))
}

/// One answer read off a connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// An error answer: the status, `Connection: close`, and a body saying what it is.
    #[track_caller]
    fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("Connection"), Some("close"), "error answers close: {self:?}");
    }
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Eof,
    Reset,
}

/// A client connection that reads answers one at a time (they may be pipelined).
struct Client {
    stream: TcpStream,
    /// Read but not yet taken as an answer.
    buf: Vec<u8>,
}

impl Client {
    #[track_caller]
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
        stream.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Client { stream, buf: Vec::new() }
    }

    #[track_caller]
    fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("sending to lastcall");
    }

    /// Reads one whole answer; `head_only` for the answer to a HEAD.
    #[track_caller]
    fn answer(&mut self, head_only: bool) -> Answer {
        loop {
            if let Some(answer) = self.take_answer(head_only) {
                return answer;
            }
            let mut chunk = [0; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "the connection ended before a whole answer: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A signal to the test process (another test's child ending) is no answer.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!(
                    "reading an answer: {e}; read so far: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// The first answer in the buffer, if it is all there.
    fn take_answer(&mut self, head_only: bool) -> Option<Answer> {
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.buf[..end - 4]).into_owned();
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {head:?}"));
        let mut answer = Answer { status, head, body: String::new() };
        let length: usize = answer
            .header("Content-Length")
            .unwrap_or_else(|| panic!("no Content-Length: {answer:?}"))
            .parse()
            .expect("a number in Content-Length");
        let length = if head_only { 0 } else { length };
        if self.buf.len() < end + length {
            return None;
        }
        answer.body = String::from_utf8_lossy(&self.buf[end..end + length]).into_owned();
        self.buf.drain(..end + length);
        Some(answer)
    }

    /// Waits for the end of the connection, which must come within `within` and without
    /// another byte.
    #[track_caller]
    fn expect_end(&mut self, within: Duration) -> End {
        self.stream.set_read_timeout(Some(within)).expect("read timeout");
        let mut chunk = [0; 4096];
        let end = loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => break End::Eof,
                Ok(n) => panic!(
                    "expected the connection to end, got {:?}",
                    String::from_utf8_lossy(&chunk[..n])
                ),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break End::Reset,
                // A signal to the test process is not the end of the connection.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("expected the connection to end within {within:?}: {e}"),
            }
        };
        assert!(self.buf.is_empty(), "unread bytes: {:?}", String::from_utf8_lossy(&self.buf));
        end
    }
}

/// Reads (and throws away) until the connection ends, by EOF or reset, within [`PROMPT`].
#[track_caller]
fn read_to_end_or_reset(client: &mut Client, what: &str) -> End {
    let deadline = Instant::now() + PROMPT;
    client.stream.set_read_timeout(Some(PROMPT)).expect("read timeout");
    let mut chunk = vec![0; 64 * 1024];
    loop {
        assert!(Instant::now() < deadline, "{what}: the connection is still open");
        match client.stream.read(&mut chunk) {
            Ok(0) => return End::Eof,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return End::Reset,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("{what}: the connection did not end: {e}"),
        }
    }
}

/// `GET path` with HTTP/1.1 and nothing else.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
}

/// The answer to one request on a connection of its own; lastcall must close it after.
#[track_caller]
fn one_shot(port: u16, request: &[u8]) -> Answer {
    let mut client = Client::connect(port);
    client.send(request);
    let answer = client.answer(false);
    client.expect_end(PROMPT);
    answer
}

#[test]
fn routes_aliases_head_and_verbose() {
    let dir = TestDir::new("hostile_routes");
    let mut up = start(&dir, &[], SLEEPER);
    let mut client = up.connect();
    for (path, body) in [
        ("/readyz", "ready\n"),
        ("/ready", "ready\n"),
        ("/livez", "alive\n"),
        ("/healthz", "alive\n"),
        ("/health", "alive\n"),
        ("/readyz?x=1", "ready\n"),
    ] {
        client.send(get(path));
        let answer = client.answer(false);
        assert_eq!((answer.status, answer.body.as_str()), (200, body), "GET {path}: {answer:?}");
        assert_eq!(answer.header("Content-Type"), Some("text/plain; charset=utf-8"));
        assert_eq!(answer.header("Connection"), None, "HTTP/1.1 keeps alive: {answer:?}");
    }

    // HEAD: GET's headers, no body; the next answer on the connection starts right after.
    client.send("HEAD /readyz HTTP/1.1\r\n\r\nGET /livez HTTP/1.1\r\n\r\n");
    let head = client.answer(true);
    assert_eq!((head.status, head.header("Content-Length")), (200, Some("6")), "{head:?}");
    let next = client.answer(false);
    assert_eq!((next.status, next.body.as_str()), (200, "alive\n"), "after a HEAD: {next:?}");

    for (path, word) in [("/readyz?verbose", "ready"), ("/healthz?a=b&verbose=1", "alive")] {
        client.send(get(path));
        let answer = client.answer(false);
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        let lines: Vec<&str> = answer.body.lines().collect();
        assert_eq!(lines.first(), Some(&word), "{path}: {answer:?}");
        assert!(lines.contains(&"phase: running"), "{path}: {answer:?}");
        assert!(lines.contains(&format!("child pid: {}", up.child).as_str()), "{path}: {answer:?}");
        assert!(lines.iter().any(|l| l.starts_with("time in phase: ")), "{path}: {answer:?}");
    }

    // Errors close the connection, after the answer is read.
    for path in ["/nope", "/readyz/", "/READYZ", "/metrics/x"] {
        one_shot(up.port, get(path).as_bytes()).assert_error(404);
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"] {
        let answer = one_shot(up.port, format!("{method} /readyz HTTP/1.1\r\n\r\n").as_bytes());
        answer.assert_error(405);
        assert_eq!(answer.header("Allow"), Some("GET, HEAD"), "{method}: {answer:?}");
    }
    // The keep-alive connection is still there after all that.
    client.send(get("/readyz"));
    assert_eq!(client.answer(false).status, 200);
    up.assert_intact();
}

/// The first bytes of a TLS 1.2 ClientHello, as a client that took the port for HTTPS sends.
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x5c, 0x2a, 0x91, 0x00, 0x0d,
    0x0a, 0x0d, 0x0a, 0x00, 0x00, 0x20, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xcc, 0xa9, 0x0d, 0x0a,
    0x0d, 0x0a,
];

#[test]
fn garbage_and_oversized_heads_are_refused() {
    let dir = TestDir::new("hostile_garbage");
    let mut up = start(&dir, &[], SLEEPER);
    let port = up.port;

    one_shot(port, CLIENT_HELLO).assert_error(400);
    one_shot(port, b"\x00\x01\x02\xff\xfe\r\n\r\n").assert_error(400);
    one_shot(port, b"GET /readyz HTTP/9.9\r\n\r\n").assert_error(400);
    one_shot(port, b"GET /readyz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").assert_error(400);
    one_shot(port, b"GET /readyz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .assert_error(400);

    // 100 KiB in one header: written whole (lastcall discards what follows its answer),
    // then the 431 is read.
    let big = format!("GET /readyz HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    one_shot(port, big.as_bytes()).assert_error(431);

    // The head limit is 8 KiB: a head of exactly 8192 bytes passes, one more byte does not.
    let pad = |total: usize| {
        let bare = "GET /readyz HTTP/1.1\r\nX-Pad: \r\n\r\n".len();
        format!("GET /readyz HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(total - bare))
    };
    assert_eq!(one_shot(port, pad(8192).replace("1.1", "1.0").as_bytes()).status, 200);
    one_shot(port, pad(8193).as_bytes()).assert_error(431);

    // At most 64 headers.
    let headers = |n: usize| {
        let lines: String = (0..n).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET /readyz HTTP/1.0\r\n{lines}\r\n")
    };
    assert_eq!(one_shot(port, headers(64).as_bytes()).status, 200);
    one_shot(port, headers(65).as_bytes()).assert_error(431);
    one_shot(port, headers(1000).as_bytes()).assert_error(431);

    // A good request pipelined after a bad one is not answered: the connection closes.
    let mut client = up.connect();
    client.send(b"BAD\x01 / HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\n");
    client.answer(false).assert_error(400);
    client.expect_end(PROMPT);
    up.assert_intact();
}

#[test]
fn stalled_and_silent_connections_time_out() {
    let dir = TestDir::new("hostile_timeouts");
    let mut up = start(&dir, &["--request-timeout", "500ms", "--idle-timeout", "500ms"], SLEEPER);
    let started = Instant::now();
    // All three at once; each must end after its timeout (never before) and well within
    // the bound.
    let mut stalled = up.connect();
    stalled.send("GET /rea");
    let mut silent = up.connect();
    let mut idle = up.connect();
    idle.send(get("/readyz"));
    assert_eq!(idle.answer(false).status, 200);

    let answer = stalled.answer(false);
    let took = started.elapsed();
    answer.assert_error(408);
    stalled.expect_end(PROMPT);
    assert!(took >= Duration::from_millis(500), "408 after {took:?}, before the timeout");
    assert!(took < PROMPT, "408 after {took:?}");

    // Nothing sent, or nothing more: closed without a word.
    for (what, client) in [("silent", &mut silent), ("idle", &mut idle)] {
        client.expect_end(PROMPT);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500), "{what}: closed after {took:?}");
    }
    let dropped = up.metric("lastcall_http_connections_dropped_total");
    assert!(dropped >= 3.0, "three connections timed out; dropped_total {dropped}");
    up.assert_intact();
}

#[test]
fn keep_alive_http_1_0_and_pipelining() {
    let dir = TestDir::new("hostile_keepalive");
    let mut up = start(&dir, &[], SLEEPER);

    // HTTP/1.0 closes by default, unless it asks to keep alive.
    let answer = one_shot(up.port, b"GET /readyz HTTP/1.0\r\n\r\n");
    assert_eq!((answer.status, answer.header("Connection")), (200, Some("close")), "{answer:?}");
    let mut client = up.connect();
    for _ in 0..2 {
        client.send("GET /readyz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(client.answer(false).status, 200);
    }
    drop(client);

    // HTTP/1.1 keeps alive: two requests, one after the other, on one connection.
    let mut client = up.connect();
    for path in ["/readyz", "/livez"] {
        client.send(get(path));
        let answer = client.answer(false);
        assert_eq!((answer.status, answer.header("Connection")), (200, None), "{answer:?}");
    }
    // Three in one write: three answers, in order, and the connection stays open.
    client.send(format!("{}{}{}", get("/livez"), get("/readyz?verbose"), get("/ready")));
    let bodies: Vec<String> = (0..3).map(|_| client.answer(false).body).collect();
    assert_eq!(bodies[0], "alive\n");
    assert!(bodies[1].starts_with("ready\nphase: running\n"), "{bodies:?}");
    assert_eq!(bodies[2], "ready\n");
    client.send(get("/healthz"));
    assert_eq!(client.answer(false).body, "alive\n");
    // `Connection: close` ends it, and a request pipelined after it is not answered.
    client.send("GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\nGET /livez HTTP/1.1\r\n\r\n");
    let answer = client.answer(false);
    assert_eq!((answer.status, answer.header("Connection")), (200, Some("close")), "{answer:?}");
    client.expect_end(PROMPT);

    // A client that half-closes after its request (`nc -N`) still gets the answer.
    let mut client = up.connect();
    client.send(get("/readyz"));
    client.stream.shutdown(std::net::Shutdown::Write).expect("shutting the write side");
    assert_eq!(client.answer(false).body, "ready\n");
    client.expect_end(PROMPT);
    up.assert_intact();
}

#[test]
fn a_request_trickled_byte_by_byte_is_answered() {
    let dir = TestDir::new("hostile_trickle");
    let mut up = start(&dir, &[], SLEEPER);
    let mut client = up.connect();
    // Two requests back to back, one byte every 5 ms: about 0.4 s, far below the 10 s
    // request timeout. The first is answered while the second is still arriving.
    let requests = format!("{}{}", get("/readyz"), get("/livez"));
    for byte in requests.as_bytes() {
        client.send([*byte]);
        thread::sleep(Duration::from_millis(5));
    }
    let first = client.answer(false);
    let second = client.answer(false);
    assert_eq!((first.status, first.body.as_str()), (200, "ready\n"), "{first:?}");
    assert_eq!((second.status, second.body.as_str()), (200, "alive\n"), "{second:?}");
    up.assert_intact();
}

#[test]
fn a_client_that_never_reads_is_dropped() {
    let dir = TestDir::new("hostile_never_reads");
    let mut up = start(&dir, &[], SLEEPER);
    let port = up.port;
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let flood = thread::spawn(move || {
        let mut client = Client::connect(port);
        client.stream.set_write_timeout(Some(Duration::from_secs(2))).expect("write timeout");
        // `/metrics`: each answer is about a hundred times its request, so the socket
        // buffers (which grow to megabytes on loopback) fill long before the bound, however
        // lastcall paces its reads and writes.
        let batch = get("/metrics").repeat(500);
        let mut sent = 0;
        for _ in 0..40 {
            if client.stream.write_all(batch.as_bytes()).is_err() {
                break; // Reset by lastcall, or it stopped reading: either way, done.
            }
            sent += 500;
            let _ = started_tx.send(());
        }
        (client, sent)
    });
    // Others are answered while the flood goes on (or right after, if it was that quick).
    let _ = started_rx.recv_timeout(TIMEOUT);
    let mut probes = 0;
    while probes < 1 || (!flood.is_finished() && probes < 100) {
        assert_eq!(http(port, "GET", "/readyz").status, 200, "during the flood");
        probes += 1;
    }
    let (mut client, sent) = flood.join().expect("the flood thread");
    wait_until("lastcall counts the never-reading client as dropped", || {
        up.metric("lastcall_http_connections_dropped_total") >= 1.0
    });
    // Its socket ends: reset (lastcall closed it with requests unread) or closed, after
    // whatever answers lastcall had written before.
    read_to_end_or_reset(&mut client, &format!("the flooding client ({sent} requests sent)"));
    up.assert_intact();
}

#[test]
fn a_pipelining_client_that_reads_its_answers_is_not_dropped() {
    let dir = TestDir::new("hostile_long_pipeline");
    let mut up = start(&dir, &[], SLEEPER);
    // 1,000 requests (41 KB) written in one go by one thread while this one reads every
    // answer: the client reads, so however lastcall paces itself it has no reason to drop it.
    const N: usize = 1000;
    let mut client = up.connect();
    let mut writer = client.stream.try_clone().expect("cloning the socket");
    let send = thread::spawn(move || writer.write_all(get("/readyz").repeat(N).as_bytes()));
    for i in 0..N {
        let answer = client.answer(false);
        assert_eq!((answer.status, answer.body.as_str()), (200, "ready\n"), "answer {i}");
    }
    send.join().expect("the writer thread").expect("writing the pipeline");
    assert_eq!(up.metric("lastcall_http_connections_dropped_total"), 0.0);
    up.assert_intact();
}

/// At `--max-connections`, a new connection makes room: the connection idle longest goes
/// first, and one with a partial request only when none has been idle for a second (a
/// connection that just came gets that long to send its request).
#[test]
fn at_the_maximum_the_longest_idle_connection_makes_room() {
    let dir = TestDir::new("hostile_max_connections");
    let mut up = start(&dir, &["--max-connections", "3"], SLEEPER);
    // Two connections with half a request each, then one kept alive after an answer: lastcall
    // has read the halves by the time it answers (their data came first).
    let mut partial: Vec<Client> = (0..2).map(|_| up.connect()).collect();
    for client in &mut partial {
        client.send("GET /readyz HTTP/1.1\r\n");
    }
    let mut kept = up.connect();
    kept.send(get("/readyz"));
    assert_eq!(kept.answer(false).status, 200);

    // A newcomer a moment later: the oldest partial request makes room, not the connection
    // that was answered a moment ago.
    let mut first = up.connect();
    first.send(get("/readyz"));
    assert_eq!(first.answer(false).status, 200, "the new connection is served");
    assert_eq!(partial[0].expect_end(PROMPT), End::Eof, "the oldest partial request made room");

    // Once the idle ones have waited a second, the one idle longest goes first.
    std::thread::sleep(Duration::from_millis(1100));
    let mut second = up.connect();
    second.send(get("/readyz"));
    assert_eq!(second.answer(false).status, 200);
    assert_eq!(kept.expect_end(PROMPT), End::Eof, "the connection idle longest made room");

    // The younger partial request was kept: it completes and is answered.
    partial[1].send("Host: 127.0.0.1\r\n\r\n");
    assert_eq!(partial[1].answer(false).status, 200, "a partial request was dropped");
    first.send(get("/metrics"));
    let metrics = first.answer(false);
    let evicted = |reason: &str| {
        let series = format!("lastcall_http_connections_evicted_total{{reason=\"{reason}\"}}");
        sample(&metrics.body, &series)
    };
    assert_eq!((evicted("idle"), evicted("partial_request")), (1.0, 1.0), "{}", metrics.body);
    assert_eq!(sample(&metrics.body, "lastcall_http_connections_rejected_total"), 0.0);
    assert_eq!(sample(&metrics.body, "lastcall_http_connections"), 3.0);
    up.assert_intact();
}

#[test]
fn metrics_are_well_formed_and_count() {
    let dir = TestDir::new("hostile_metrics");
    let mut up = start(&dir, &[], "trap 'rec HUP' HUP; mark pid $$; idle");
    for _ in 0..3 {
        assert_eq!(http(up.port, "GET", "/readyz").status, 200);
    }
    // One at a time: two standard signals pending at once merge into one.
    for n in 1..=2 {
        up.lastcall.signal(libc::SIGHUP);
        up.lastcall.wait_until(&format!("the child got SIGHUP {n} times"), || dir.got().len() == n);
    }

    let mut client = up.connect();
    client.send(get("/metrics"));
    let reply = client.answer(false);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = &reply.body;
    assert!(text.ends_with('\n'), "the exposition ends with a newline:\n{text}");

    // Every sample belongs to the family of the last `# TYPE`, each family declared once,
    // with HELP, and every value is a number.
    let mut families: Vec<String> = Vec::new();
    let mut helped: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split(' ').next().unwrap_or_default().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(matches!(kind, "gauge" | "counter"), "{line}");
            assert!(!families.iter().any(|f| f == name), "{name} declared twice:\n{text}");
            assert!(helped.iter().any(|h| h == name), "{name} has no HELP:\n{text}");
            families.push(name.to_string());
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "stray line {line:?}:\n{text}");
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            let name = series.split('{').next().unwrap_or_default();
            assert_eq!(
                families.last().map(String::as_str),
                Some(name),
                "sample outside its family's group: {line}\n{text}"
            );
            assert!(value.parse::<f64>().is_ok_and(f64::is_finite), "bad value: {line}");
        }
    }
    for family in [
        "lastcall_phase",
        "lastcall_ready",
        "lastcall_child_pid",
        "lastcall_uptime_seconds",
        "lastcall_signals_received_total",
        "lastcall_signals_forwarded_total",
        "lastcall_zombies_reaped_total",
        "lastcall_probes_total",
        "lastcall_http_connections",
        "lastcall_http_connections_rejected_total",
        "lastcall_http_connections_dropped_total",
    ] {
        assert!(families.iter().any(|f| f == family), "no {family}:\n{text}");
    }
    assert!(!text.contains("lastcall_last_drain_seconds"), "no drain yet:\n{text}");

    let value = |series: &str| sample(text, series);
    assert_eq!(value("lastcall_phase{phase=\"running\"}"), 1.0);
    assert_eq!(value("lastcall_ready"), 1.0);
    assert_eq!(value("lastcall_child_pid"), f64::from(up.child));
    assert!(value("lastcall_uptime_seconds") > 0.0);
    assert_eq!(value("lastcall_signals_received_total{signal=\"SIGHUP\"}"), 2.0);
    assert_eq!(value("lastcall_signals_forwarded_total{signal=\"SIGHUP\"}"), 2.0);
    assert_eq!(value("lastcall_probes_total{path=\"/readyz\",code=\"200\"}"), 3.0);
    assert_eq!(value("lastcall_probes_total{path=\"/readyz\",code=\"503\"}"), 0.0);
    assert_eq!(value("lastcall_probes_total{path=\"/livez\",code=\"200\"}"), 0.0);
    assert!(value("lastcall_http_connections") >= 1.0, "this connection is open");
    assert_eq!(value("lastcall_http_connections_rejected_total"), 0.0);

    // `/metrics` is not a probe: asking again leaves the probe counters as they were.
    client.send(get("/metrics"));
    let again = client.answer(false).body;
    assert_eq!(sample(&again, "lastcall_probes_total{path=\"/readyz\",code=\"200\"}"), 3.0);
    up.assert_intact();
}

#[test]
fn a_shutdown_with_hostile_clients_connected_still_runs_in_order() {
    let dir = TestDir::new("hostile_shutdown");
    let up = start(
        &dir,
        &["--prestop-delay", "1s", "--grace-period", "5s"],
        "trap 'rec TERM $(date +%s%N); exit 0' TERM; mark pid $$; idle",
    );
    let port = up.port;
    // Ten slowloris connections, each with part of a head sent.
    let mut slow: Vec<Client> = (0..10).map(|_| up.connect()).collect();
    for client in &mut slow {
        client.send("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
    }
    // One that asks and never reads.
    let mut deaf = up.connect();
    deaf.send(get("/livez").repeat(200));
    wait_until("lastcall has taken in the hostile clients", || {
        let text = http(port, "GET", "/metrics").body;
        sample(&text, "lastcall_http_connections") >= 12.0
            && sample(&text, "lastcall_probes_total{path=\"/livez\",code=\"200\"}") >= 200.0
    });

    let Up { mut lastcall, .. } = up;
    let sent = unix_nanos();
    let sent_at = Instant::now();
    lastcall.signal(libc::SIGTERM);
    lastcall.wait_until("/readyz answers 503 while draining", || {
        http(port, "GET", "/readyz").status == 503
    });
    let out = lastcall.wait();
    let took = sent_at.elapsed();
    out.assert_code(0);
    let got = dir.got();
    out.check(got.len() == 1, "expected the child to record one TERM");
    let at: u128 = got[0]
        .strip_prefix("TERM ")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("not a TERM time: {got:?}"));
    let waited = Duration::from_nanos(at.saturating_sub(sent) as u64);
    out.check(
        waited >= Duration::from_secs(1),
        format!("the stop signal came {waited:?} after SIGTERM, before the 1s preStop delay"),
    );
    out.check(took < Duration::from_secs(10), format!("lastcall took {took:?} to exit"));
    // Gone with lastcall: nothing is left holding the hostile connections.
    for client in &mut slow {
        client.expect_end(PROMPT);
    }
    read_to_end_or_reset(&mut deaf, "the client that never read");
}
