//! The apps the tests supervise: small `python3` programs ([`PY_PRELUDE`] and one body
//! each), separate processes like a real app, reporting through marker files in `$DIR` as
//! the `sh` children do; and the requests the tests make of lastcall about them.

use super::{Cmd, Running, TestDir, http};

/// What every python app starts with:
/// - `mark(NAME, TEXT)` creates `$DIR/NAME` atomically;
/// - `wait_for(NAME)` waits (bounded) until the test creates `$DIR/NAME`;
/// - `listen(PORT)` listens on 127.0.0.1:PORT; `hold(SOCKET)` accepts connections and keeps
///   them open, counting them in `$DIR/accepted`, for about a minute at most;
/// - SIGTERM is recorded in `$DIR/term` with the time it came (Unix nanoseconds), then the
///   app dies of it.
pub const PY_PRELUDE: &str = r#"
import os, signal, socket, sys, time
D = os.environ["DIR"]
PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 0
def mark(name, text=""):
    tmp = os.path.join(D, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(D, name))
def wait_for(name):
    for _ in range(1500):
        if os.path.exists(os.path.join(D, name)):
            return
        time.sleep(0.02)
    sys.exit("gave up waiting for " + name)
def on_term(*_):
    mark("term", str(time.time_ns()))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
signal.signal(signal.SIGTERM, on_term)
def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s
def hold(s):
    s.settimeout(0.2)
    held = []
    end = time.time() + 60
    while time.time() < end:
        try:
            c, _ = s.accept()
        except socket.timeout:
            continue
        held.append(c)
        mark("accepted", str(len(held)))
"#;

/// Listens on PORT at once and holds every connection.
pub const HOLDER: &str = r#"
s = listen(PORT)
mark("listening")
hold(s)
"#;

/// lastcall on 127.0.0.1:`port` with `options`, supervising the python app `body` (given
/// `app_port` as its argument).
pub fn lastcall_with_app(
    dir: &TestDir,
    port: u16,
    options: &[&str],
    body: &str,
    app_port: u16,
) -> Cmd {
    dir.lastcall().args(["--listen", &format!("127.0.0.1:{port}")]).args(options).args([
        "--",
        "python3",
        "-c",
        &format!("{PY_PRELUDE}{body}"),
        &app_port.to_string(),
    ])
}

pub fn readyz(port: u16) -> u16 {
    http(port, "GET", "/readyz").status
}

/// `/readyz?verbose`'s body.
pub fn verbose(port: u16) -> String {
    http(port, "GET", "/readyz?verbose").body
}

pub fn metrics(port: u16) -> String {
    http(port, "GET", "/metrics").body
}

/// Waits until `/readyz` answers `status`.
pub fn wait_readyz(lastcall: &mut Running, port: u16, status: u16) {
    lastcall.wait_until(&format!("/readyz answers {status}"), || readyz(port) == status);
}

/// The Unix-nanosecond time the app wrote to `$DIR/term` when it got SIGTERM.
pub fn term_at(dir: &TestDir) -> u128 {
    dir.read("term").trim().parse().expect("a timestamp in $DIR/term")
}

/// How many times `needle` occurs in lastcall's stderr so far.
pub fn stderr_count(dir: &TestDir, needle: &str) -> usize {
    dir.read("stderr").matches(needle).count()
}
