//! What every test needs: a temp dir per test, a builder that runs lastcall (or any command)
//! with its output in files, bounded waits, and assertions that print the whole story (the
//! command, its exit status, stdout, stderr and the marker files) when they fail.
//!
//! Children are `sh` scripts. [`PROLOGUE`] gives them small helpers to report what they saw
//! through marker files in `$DIR`, the test's temp dir.

pub mod apps;
pub mod lb;
pub mod serial;

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const LASTCALL: &str = env!("CARGO_BIN_EXE_lastcall");

/// The longest any single wait may take before the test fails. Generous: the suite runs in
/// parallel on two cores, and every correct wait here takes well under a second.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Shell functions every child script gets:
/// - `mark NAME [TEXT]` creates `$DIR/NAME` atomically, so the test never reads it half written;
/// - `rec WORDS...` appends one line to `$DIR/got` (one `echo`: one write);
/// - `await NAME` waits (bounded) until the test creates `$DIR/NAME`;
/// - `idle` waits about 30 s in short sleeps. dash runs a trap only between commands, so a
///   long `sleep` would delay it; bounded, so that a broken test leaves nothing behind for long.
pub const PROLOGUE: &str = r#"mark() { echo "${2:-}" > "$DIR/$1.tmp" && mv "$DIR/$1.tmp" "$DIR/$1"; }
rec() { echo "$*" >> "$DIR/got"; }
await() { n=0; while [ ! -e "$DIR/$1" ] && [ $n -lt 1000 ]; do sleep 0.02; n=$((n+1)); done; }
idle() { i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; }
"#;

/// A directory of its own for one test, under cargo's target tmp dir. Kept when the test
/// fails, for a look at the marker files.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique =
            format!("{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("it").join(unique);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("creating the test dir");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.join(name).exists()
    }

    /// The file's text, or "" when it does not exist (yet).
    pub fn read(&self, name: &str) -> String {
        read(&self.path, name)
    }

    pub fn write(&self, name: &str, text: &str) {
        fs::write(self.join(name), text).expect("writing a test file");
    }

    /// The lines the child recorded with `rec`.
    pub fn got(&self) -> Vec<String> {
        self.read("got").lines().map(str::to_string).collect()
    }

    /// Whether the child recorded a line starting with `word`.
    pub fn got_has(&self, word: &str) -> bool {
        self.got().iter().any(|l| l == word || l.starts_with(&format!("{word} ")))
    }

    /// lastcall, with `$DIR` set and none of its settings leaking in from the test's
    /// environment.
    pub fn lastcall(&self) -> Cmd {
        self.command(LASTCALL)
    }

    pub fn command(&self, program: &str) -> Cmd {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("LASTCALL_") || key == "KUBERNETES_SERVICE_HOST" {
                cmd.env_remove(&key);
            }
        }
        cmd.env("DIR", &self.path).stdin(Stdio::null());
        let shown = if program == LASTCALL { "lastcall" } else { program };
        Cmd { cmd, shown: vec![shown.to_string()], dir: self.path.clone(), files: true }
    }
}

/// The file's text, or "" when it does not exist (yet).
fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Every file the child left (but the output files), for failure messages.
fn dir_report(dir: &Path) -> String {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "stdout" && n != "stderr")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = String::new();
    for name in names {
        let text = read(dir, &name);
        let text: String = text.chars().take(2000).collect();
        out.push_str(&format!("--- $DIR/{name}:\n{text}"));
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A command to run, shaped like `std::process::Command`. stdout and stderr go to
/// `$DIR/stdout` and `$DIR/stderr`: no pipes to drain, and the output so far can be read
/// while the process runs.
pub struct Cmd {
    cmd: Command,
    shown: Vec<String>,
    dir: PathBuf,
    files: bool,
}

impl Cmd {
    pub fn arg(mut self, arg: impl AsRef<str>) -> Cmd {
        self.cmd.arg(arg.as_ref());
        self.shown.push(quote(arg.as_ref()));
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Cmd {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// Ends the command line with `-- sh -c SCRIPT`, the script after [`PROLOGUE`].
    pub fn sh(mut self, script: &str) -> Cmd {
        self.cmd.args(["--", "sh", "-c", &format!("{PROLOGUE}{script}")]);
        self.shown.push(format!("-- sh -c {}", quote(script)));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.cmd.env(key, value);
        self.shown.insert(0, format!("{key}={}", quote(value)));
        self
    }

    /// An environment variable whose value need not be UTF-8.
    pub fn env_os(mut self, key: &str, value: &std::ffi::OsStr) -> Cmd {
        self.cmd.env(key, value);
        self.shown.insert(0, format!("{key}={value:?}"));
        self
    }

    /// Replaces the standard streams (the terminal tests); the output files stay empty.
    pub fn stdio(mut self, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> Cmd {
        self.cmd.stdin(stdin).stdout(stdout).stderr(stderr);
        self.files = false;
        self
    }

    /// Runs `f` in the child between fork and exec.
    ///
    /// # Safety
    /// As for [`CommandExt::pre_exec`]: `f` may only make async-signal-safe calls.
    pub unsafe fn pre_exec(
        mut self,
        f: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Cmd {
        // SAFETY: passed on to the caller.
        unsafe { self.cmd.pre_exec(f) };
        self
    }

    pub fn spawn(mut self) -> Running {
        if self.files {
            let out = fs::File::create(self.dir.join("stdout")).expect("creating $DIR/stdout");
            let err = fs::File::create(self.dir.join("stderr")).expect("creating $DIR/stderr");
            self.cmd.stdout(out).stderr(err);
        }
        let shown = self.shown.join(" ");
        let child = self.cmd.spawn().unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        Running { child: Some(child), shown, dir: self.dir, started: Instant::now() }
    }

    /// Starts the command and waits until its child has created `$DIR/MARKER` (`mark
    /// MARKER` in a script): a test's usual start, with its options still at the call site.
    pub fn spawn_marked(self, marker: &str) -> Running {
        let file = self.dir.join(marker);
        let mut running = self.spawn();
        running.wait_until(&format!("the child marks $DIR/{marker}"), || file.exists());
        running
    }

    /// Runs to the end, within [`TIMEOUT`].
    pub fn run(self) -> Finished {
        self.spawn().wait()
    }
}

/// Quotes a shell word for display, when it needs it.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=.,:/+@%".contains(&b));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// A started process. Dropping it (a test that failed half-way included) kills it and every
/// process under it, by pid.
pub struct Running {
    child: Option<Child>,
    shown: String,
    /// The test's dir, where the output goes.
    dir: PathBuf,
    started: Instant,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        send(self.pid(), sig);
    }

    /// Sends `sig` to the process, then waits for its end within [`TIMEOUT`].
    pub fn signal_and_wait(self, sig: i32) -> Finished {
        self.signal(sig);
        self.wait()
    }

    /// Waits until `cond` holds; on timeout the test fails with everything known so far.
    pub fn wait_until(&mut self, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if cond() {
                return start.elapsed();
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                // One last look: the process may have made `cond` true on its way out.
                if cond() {
                    return start.elapsed();
                }
                panic!("exited before {what}\n{}", self.report(Some(status)));
            }
            if start.elapsed() > TIMEOUT {
                panic!("timed out after {TIMEOUT:?} waiting until {what}\n{}", self.report(None));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&mut self, needle: &str) {
        let dir = self.dir.clone();
        self.wait_until(&format!("stderr says {needle:?}"), || {
            fs::read_to_string(dir.join("stderr")).is_ok_and(|s| s.contains(needle))
        });
    }

    /// The exit status, if the process has ended (it is then reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the end, within [`TIMEOUT`].
    pub fn wait(self) -> Finished {
        self.wait_for(TIMEOUT)
    }

    /// Waits for the end; kills the process tree and fails the test on timeout.
    pub fn wait_for(mut self, timeout: Duration) -> Finished {
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return Finished {
                    shown: std::mem::take(&mut self.shown),
                    status,
                    stdout: read(&self.dir, "stdout"),
                    stderr: read(&self.dir, "stderr"),
                    elapsed: self.started.elapsed(),
                    files: dir_report(&self.dir),
                };
            }
            if start.elapsed() > timeout {
                let report = self.report(None);
                self.kill();
                panic!("did not exit within {timeout:?}; killed it\n{report}");
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    fn report(&self, status: Option<ExitStatus>) -> String {
        let status = match status {
            Some(s) => show_status(s),
            None => "still running".to_string(),
        };
        format!(
            "command: {}\nstatus: {status}\n--- stdout:\n{}\n--- stderr:\n{}\n{}",
            self.shown,
            read(&self.dir, "stdout"),
            read(&self.dir, "stderr"),
            dir_report(&self.dir)
        )
    }

    /// Kills the process tree, unless the process has ended: once it is reaped its pid may
    /// belong to someone else.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                kill_tree(child.id() as i32);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a process ended, with what it printed.
pub struct Finished {
    pub shown: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From spawn to the moment the end was seen.
    pub elapsed: Duration,
    files: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails the test, showing everything, unless `ok`.
    #[track_caller]
    pub fn check(&self, ok: bool, what: impl fmt::Display) -> &Finished {
        if !ok {
            panic!("{what}\n{self}");
        }
        self
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Finished {
        self.check(self.code() == Some(code), format!("expected exit status {code}"))
    }

    #[track_caller]
    pub fn assert_stderr_empty(&self) -> &Finished {
        self.check(self.stderr.is_empty(), "expected nothing on stderr")
    }

    #[track_caller]
    pub fn assert_stderr_has(&self, needle: &str) -> &Finished {
        self.check(self.stderr.contains(needle), format!("expected stderr to contain {needle:?}"))
    }

    /// Asserts stderr is exactly one line, and returns it.
    #[track_caller]
    pub fn one_stderr_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        self.check(
            lines.len() == 1 && self.stderr.ends_with('\n'),
            "expected exactly one line on stderr",
        );
        lines[0]
    }
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {} after {:?}\n--- stdout:\n{}\n--- stderr:\n{}\n{}",
            self.shown,
            show_status(self.status),
            self.elapsed,
            self.stdout,
            self.stderr,
            self.files
        )
    }
}

fn show_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status:?}"),
    }
}

/// Waits until `cond` holds, failing the test after [`TIMEOUT`]. Returns how long it took.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > TIMEOUT {
            panic!("timed out after {TIMEOUT:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// `kill(2)`; the test fails if the process does not exist.
#[track_caller]
pub fn send(pid: i32, sig: i32) {
    // SAFETY: plain libc call.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
}

/// Wall-clock nanoseconds, comparable with `date +%s%N` in a child.
pub fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_nanos()
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces): state is
/// field 0, the parent pid field 1, the start time field 19.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The process's state letter (R, S, Z, ...), or `None` once it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// The pids of the children of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let text = fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Every process whose chain of parents leads to `root`.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse().ok()) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(parent) = todo.pop() {
        for &child in children.get(&parent).map(Vec::as_slice).unwrap_or(&[]) {
            if !found.contains(&child) {
                found.push(child);
                todo.push(child);
            }
        }
    }
    found
}

/// SIGKILLs `root` and every process under it, by pid. They are stopped first, so that none
/// of them starts another process or is reparented while the tree is being read.
fn kill_tree(root: i32) {
    let mut all = vec![root];
    for _ in 0..3 {
        for pid in descendants(root) {
            if !all.contains(&pid) {
                all.push(pid);
            }
        }
        for &pid in &all {
            // SAFETY: plain libc call; the process may be gone already.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
    }
    for &pid in &all {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A process the test learned about (say, from a marker file), killed when the guard drops
/// if it still runs: the same pid *and* start time, so a reused pid is never hit.
pub struct ProcessGuard {
    pid: i32,
    start_time: Option<String>,
}

impl ProcessGuard {
    pub fn new(pid: i32) -> ProcessGuard {
        ProcessGuard { pid, start_time: start_time(pid) }
    }
}

fn start_time(pid: i32) -> Option<String> {
    stat_fields(pid)?.get(19).cloned()
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if self.start_time.is_some() && start_time(self.pid) == self.start_time {
            // SAFETY: plain libc call on a process this test started.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// A port that was free a moment ago. Another process may take it before lastcall binds
/// it: [`spawn_listening`] retries then.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Starts lastcall on a free port (`make(port)` builds the command) and waits until `ready`;
/// picks another port if the one chosen was taken meanwhile.
pub fn spawn_listening(make: impl Fn(u16) -> Cmd, ready: impl Fn() -> bool) -> (Running, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut running = make(port).spawn();
        let start = Instant::now();
        loop {
            if ready() {
                return (running, port);
            }
            if running.try_wait().is_some() {
                break;
            }
            if start.elapsed() > TIMEOUT {
                panic!("timed out waiting for the child to be ready\n{}", running.report(None));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let finished = running.wait();
        let lost_port = finished.code() == Some(125) && finished.stderr.contains("cannot listen");
        finished.check(lost_port, "lastcall exited before its child was ready");
    }
    panic!("no free port after 5 tries");
}

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One request to lastcall's endpoint on 127.0.0.1:`port`, on its own connection.
#[track_caller]
pub fn http(port: u16, method: &str, path: &str) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    stream.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("sending the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the answer to {method} {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in the answer to {method} {path}: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in the answer to {method} {path}: {text:?}"));
    Reply { status, head: head.to_string(), body: body.to_string() }
}

/// Whether a test's requirement is met. When it is not, the test is skipped with a line
/// saying why, except in CI (`CI` set), where a missing requirement fails loudly: a CI
/// that silently skips the PID-1 tests would not test PID 1 at all.
pub fn required(what: &str, met: bool) -> bool {
    if met {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set, and this test needs {what}");
    }
    // Straight to stderr: libtest would hide an `eprintln!` of a test that passes.
    let _ = writeln!(std::io::stderr(), "skipped: this test needs {what}");
    false
}

/// Moves the calling test's thread, and whatever it starts from now on, into a network
/// namespace of its own with only loopback, up: a pod's, as far as the drain can tell. The
/// drain counts every connection accepted in its namespace as traffic that may be the app's;
/// in the one the tests share, those of the tests running beside it would hold its drains.
/// Needs root; elsewhere the test is skipped (or fails, in CI).
pub fn own_network() -> bool {
    // SAFETY: plain libc call.
    if !required("root, for a network namespace of its own", unsafe { libc::geteuid() } == 0) {
        return false;
    }
    // SAFETY: unshare affects this thread only; the ioctl's buffer is a local ifreq.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNET), 0, "unshare(CLONE_NEWNET)");
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "a socket to bring loopback up");
        let mut req: libc::ifreq = std::mem::zeroed();
        for (to, from) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *to = *from as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0, "SIOCGIFFLAGS lo");
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &req), 0, "SIOCSIFFLAGS lo up");
        libc::close(fd);
    }
    true
}

/// Whether the PID-1 tests can run: root, and util-linux `unshare`.
pub fn can_unshare() -> bool {
    // SAFETY: plain libc call.
    let root = unsafe { libc::geteuid() } == 0;
    let unshare = Command::new("unshare")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    required("root and unshare (util-linux)", root && unshare)
}

/// Whether python3 is here to play the app; see [`required`].
pub fn has_python() -> bool {
    required("python3", python3().is_some())
}

/// The Python interpreter itself, not a launcher script in front of it (pyenv's shims do
/// not exec python, so a SIGTERM to them would not reach the app).
pub fn python3() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !path.is_empty()).then_some(path)
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: i32) -> Duration {
    let fields = stat_fields(pid).unwrap_or_default();
    // utime and stime are fields 14 and 15 of the stat line: 11 and 12 after the name.
    let ticks: u64 =
        [11, 12].iter().filter_map(|&i| fields.get(i).and_then(|t| t.parse::<u64>().ok())).sum();
    // SAFETY: plain libc call.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// A line of /proc/PID/status in kB (`VmHWM`, `VmRSS`, ...); 0 when it cannot be read.
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The value of one sample of lastcall's `/metrics` (the exact series), if there.
pub fn metric(port: u16, series: &str) -> Option<f64> {
    let body = http(port, "GET", "/metrics").body;
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The status of `GET path` on a fresh connection, as a kubelet probes: `None` if there is
/// no complete answer within `within`.
pub fn probe(port: u16, path: &str, within: Duration) -> Option<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, within).ok()?;
    stream.set_read_timeout(Some(within)).ok()?;
    stream.set_write_timeout(Some(within)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    text.split(' ').nth(1)?.parse().ok()
}

/// One JSON value of a flat log object, as Python's `json` module read it.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

/// Parses each line of `text` with Python's `json` module (strictly: no NaN, no duplicate
/// keys, one object per line, values not nested) and gives each object's fields in order.
/// Panics, showing Python's complaint and the text, if any line is not such an object.
pub fn parse_json_lines(text: &str) -> Vec<Vec<(String, Json)>> {
    const SCRIPT: &str = r#"
import json, sys
def reject(name):
    raise ValueError("not JSON: " + name)
def pairs(items):
    keys = [k for k, _ in items]
    assert len(keys) == len(set(keys)), "duplicate keys: %r" % keys
    return items
out = []
for n, line in enumerate(sys.stdin.buffer.read().decode("utf-8", "strict").split("\n")[:-1]):
    try:
        items = json.loads(line, parse_constant=reject, object_pairs_hook=pairs)
        assert isinstance(items, list), "not an object"
    except Exception as e:
        sys.exit("line %d: %s: %r" % (n + 1, e, line))
    for key, value in items:
        kind = {str: "s", int: "i", float: "f", bool: "b", type(None): "n"}.get(type(value))
        assert kind, "line %d: %s is nested: %r" % (n + 1, key, line)
        if kind == "b":
            value = "1" if value else ""
        key = json.dumps(key, ensure_ascii=False)[1:-1]
        value = json.dumps(value, ensure_ascii=False) if kind == "s" else value
        out.append("%s\t%s\t%s" % (kind, key, value))
    out.append("")
sys.stdout.buffer.write("\n".join(out).encode("utf-8"))
"#;
    let python = python3().expect("python3");
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting python3");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("writing to python3");
    let out = child.wait_with_output().expect("python3");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python3's json module rejected a line: {}\n--- the lines:\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut objects = Vec::new();
    let mut fields = Vec::new();
    for line in said.split('\n') {
        if line.is_empty() {
            objects.push(std::mem::take(&mut fields));
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let (kind, key, value) =
            (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let value = match kind {
            // Strings come back JSON-quoted (so tabs and newlines survive): unquote the few
            // escapes a log line holds.
            "s" => Json::Str(unquote(value)),
            "i" => Json::Int(value.parse().expect("an int")),
            "f" => Json::Float(value.parse().expect("a float")),
            "b" => Json::Bool(!value.is_empty()),
            _ => Json::Null,
        };
        fields.push((unquote(&format!("\"{key}\"")), value));
    }
    assert_eq!(objects.len(), text.lines().count(), "one object per line");
    objects
}

/// A JSON string literal's text (quotes included) back to the string.
fn unquote(literal: &str) -> String {
    let inner = &literal[1..literal.len() - 1];
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let unit = u32::from_str_radix(&hex, 16).expect("\\u escape");
                out.push(char::from_u32(unit).unwrap_or('\u{fffd}'));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Load client threads: each repeats its step until the crew is stopped or `limit` has passed
/// since `start`, and keeps what every step gave. Dropping the crew, as a test that fails
/// half-way does, stops them too.
pub struct Crew<T> {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<T>>>,
    start: Instant,
    limit: Duration,
}

impl<T: Send + 'static> Crew<T> {
    pub fn new(start: Instant, limit: Duration) -> Crew<T> {
        Crew { stop: Arc::new(AtomicBool::new(false)), threads: Vec::new(), start, limit }
    }

    /// A thread that calls `step(0)`, `step(1)`, ...: each gives what it did and how long to
    /// pause before the next one (a pause ends early when the crew stops).
    pub fn spawn(&mut self, mut step: impl FnMut(usize) -> (T, Duration) + Send + 'static) {
        let (stop, start, limit) = (self.stop.clone(), self.start, self.limit);
        self.threads.push(std::thread::spawn(move || {
            let mut done = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
                let (what, pause) = step(i);
                done.push(what);
                let until = Instant::now() + pause;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10).min(pause));
                }
                i += 1;
            }
            done
        }));
    }

    /// Stops the threads and returns what every step gave, thread after thread.
    pub fn stop(mut self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut self.threads);
        threads.into_iter().flat_map(|t| t.join().expect("a load thread panicked")).collect()
    }
}

impl<T> Drop for Crew<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
