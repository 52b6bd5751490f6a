//! The HTTP endpoint's basics: what /readyz, /livez and anything else answer, and a taken
//! port stopping lastcall before it starts the child.

use std::net::TcpListener;

use crate::support::{TestDir, http, spawn_listening};

#[test]
fn the_endpoint_answers_probes() {
    let dir = TestDir::new("endpoint");
    let (lastcall, port) = spawn_listening(
        |port| {
            dir.lastcall()
                .args(["--listen", &format!("127.0.0.1:{port}"), "--prestop-delay", "0s"])
                .sh("mark ready; idle")
        },
        || dir.exists("ready"),
    );
    // The body's first word, for a person reading it; the exact text may change.
    let check = |method: &str, path: &str, status: u16, body: &str| {
        let reply = http(port, method, path);
        assert_eq!(reply.status, status, "{method} {path}: {reply:?}");
        assert!(reply.body.starts_with(body), "{method} {path}: expected {body:?}: {reply:?}");
        reply
    };
    let get = check("GET", "/readyz", 200, "ready");
    check("GET", "/livez", 200, "alive");
    check("GET", "/nope", 404, "");
    let post = check("POST", "/readyz", 405, "");
    assert!(post.head.contains("\r\nAllow: GET, HEAD"), "405 names the allowed methods: {post:?}");
    // HEAD: the headers GET sends, and no body.
    let head = check("HEAD", "/readyz", 200, "");
    assert!(head.body.is_empty(), "HEAD has no body: {head:?}");
    let length = format!("\r\nContent-Length: {}", get.body.len());
    assert!(head.head.contains(&length), "HEAD says GET's length: {head:?}");

    lastcall.signal_and_wait(libc::SIGTERM).assert_code(128 + libc::SIGTERM);
}

#[test]
fn a_taken_port_is_exit_125_before_the_child_starts() {
    let dir = TestDir::new("port_taken");
    let taken = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    let addr = taken.local_addr().unwrap().to_string();
    let out = dir.lastcall().args(["--listen", &addr]).sh("mark ran").run();
    out.assert_code(125);
    let line = out.one_stderr_line();
    out.check(
        line.starts_with("lastcall: ") && line.contains(&addr),
        format!("expected one line naming {addr}"),
    )
    .check(!dir.exists("ran"), "the child must not have been started");
    drop(taken);
}
