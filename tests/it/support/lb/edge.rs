//! The request-aware drain at its edges: the cases where an app can look idle to the drain
//! while a fixed preStop delay would still keep a request. Each is bounded in time, on
//! loopback; every process is stopped by pid by the harness.
//!
//! - `kube-RATE`: Kubernetes with no load balancer, as kube-proxy routes. lastcall runs as a
//!   new user runs it there: `KUBERNETES_SERVICE_HOST` set and no drain option (preStop
//!   `auto`, 5 s, request-aware). The app shuts down gracefully (stops accepting, finishes
//!   what is in flight, closes idle connections, exits 0), as Go's `http.Server.Shutdown`
//!   does. Clients open a new connection per request straight to the app's port, at the
//!   times of a seeded Poisson process of mean RATE requests a second, from [`LEAD`] before
//!   the SIGTERM until [`PROPAGATION`] after it (the endpoint's removal still spreading
//!   through kube-proxy), then stop. The requests started after the SIGTERM count. Several
//!   rounds run side by side, each its own pod (lastcall and its app) and seed ([`SEED`] +
//!   round, [`schedule`]).
//! - `paused-*`: an app that dies at once on SIGTERM (a legacy app), and one client whose
//!   request takes 4 s with no byte moving for a while:
//!   - `paused-body`: the answer's head comes at once, its body 4 s later; the head is in
//!     before the SIGTERM;
//!   - `paused-keepalive`: on one keep-alive connection, a quick request, then at once a 4 s
//!     one; SIGTERM 100 ms after it was sent;
//!   - `paused-ipv6`: the same on `::1`;
//!   - `paused-in-drain`: the same pair on a connection opened before the SIGTERM, sent
//!     [`IN_DRAIN`] after it;
//!   - `paused-nginx`: `paused-keepalive` through nginx (`upstream { keepalive 16; }`), which
//!     passes both on one pooled connection.
//! - `prober-flood`: two backends behind HAProxy (`http-reuse always`, checks of `/readyz`
//!   with `inter 2s fall 3`, HAProxy's usual pace, and without `option redispatch`, so that a
//!   request routed to a stopped app fails instead of waiting 3 s for a retry elsewhere), a
//!   quick request a second through it; right after the SIGTERM to backend a, 300 clients
//!   from distinct loopback addresses (127.0.1.1 to 127.0.2.44) each probe its `/readyz`
//!   once. The drain must still wait for HAProxy's three failed checks. The load's requests
//!   count; the probes must be answered 503.
//!
//! Every non-2xx answer, connection error and cut-off body is a failure. The tests run the
//! `kube-*` cases on lastcall's defaults in Kubernetes and the others with
//! `--prestop-delay 10s`; `bench/lb` runs them in every mode.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use super::drain::{APP, Drain, Figures, drain_in};
use super::{
    Backend, Balancer, backends, get, haproxy_config, haproxy_servers, nginx_config, python_and,
    quiet_ports, stats_socket,
};
use crate::support::{Crew, Running, TIMEOUT, TestDir, python3, required};

/// What a case does; see the module's doc.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Requests a second, on average.
    Kube {
        per_sec: f64,
    },
    Paused(Paused),
    Flood,
}

/// The paused-answer cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paused {
    Body,
    KeepAlive,
    Ipv6,
    InDrain,
    Nginx,
}

#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    pub kind: Kind,
}

pub const CASES: [Case; 10] = [
    Case { name: "kube-0.33", kind: Kind::Kube { per_sec: 1.0 / 3.0 } },
    Case { name: "kube-0.71", kind: Kind::Kube { per_sec: 1.0 / 1.4 } },
    Case { name: "kube-3", kind: Kind::Kube { per_sec: 3.0 } },
    Case { name: "kube-20", kind: Kind::Kube { per_sec: 20.0 } },
    Case { name: "paused-body", kind: Kind::Paused(Paused::Body) },
    Case { name: "paused-keepalive", kind: Kind::Paused(Paused::KeepAlive) },
    Case { name: "paused-ipv6", kind: Kind::Paused(Paused::Ipv6) },
    Case { name: "paused-in-drain", kind: Kind::Paused(Paused::InDrain) },
    Case { name: "paused-nginx", kind: Kind::Paused(Paused::Nginx) },
    Case { name: "prober-flood", kind: Kind::Flood },
];

/// The case named `name`.
pub fn case(name: &str) -> Option<&'static Case> {
    CASES.iter().find(|c| c.name == name)
}

/// The drain lastcall gets in Kubernetes with no drain option: `auto`, 5 s, request-aware.
pub const KUBE_DEFAULT: Drain = Drain { delay: Duration::from_secs(5), aware: true };
/// How long the clients go on after the SIGTERM in the `kube-*` cases: the endpoint's
/// removal spreading to every node's kube-proxy.
pub const PROPAGATION: Duration = Duration::from_secs(3);
/// How long the clients run before the SIGTERM in the `kube-*` cases.
pub const LEAD: Duration = Duration::from_millis(1500);
/// When the requests of `paused-in-drain` go out, after the SIGTERM.
pub const IN_DRAIN: Duration = Duration::from_millis(300);
/// The slow request of the `paused-*` cases.
const PAUSE_MS: u64 = 4000;
/// The seed of round 0 of a `kube-*` case; round N uses `SEED + N`.
pub const SEED: u64 = 21;
/// The grace period lastcall gets: the apps here end within a second of their stop signal.
const GRACE: &str = "10s";

/// Runs `case` with `drain`, `rounds` times, and prints its summary; `None` when something
/// the case needs (python3, HAProxy, nginx, `::1`) is missing (see [`required`]).
pub fn run(case: &Case, drain: Drain, rounds: usize) -> Option<Figures> {
    let mut total = Tally::default();
    match case.kind {
        Kind::Kube { per_sec } => {
            let python = need_python()?;
            // Side by side: each round waits out its own drain.
            let tallies: Vec<Tally> = std::thread::scope(|s| {
                let runs: Vec<_> = (0..rounds)
                    .map(|round| {
                        let python = python.clone();
                        s.spawn(move || kube(case.name, &python, per_sec, drain, round))
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().expect("a kube round panicked")).collect()
            });
            tallies.into_iter().for_each(|t| total.add(t));
        }
        Kind::Paused(how) => {
            let python = match how {
                Paused::Nginx => python_and("nginx")?,
                Paused::Ipv6 => {
                    let here = TcpListener::bind("[::1]:0").is_ok();
                    if !required("the IPv6 loopback address ::1", here) {
                        return None;
                    }
                    need_python()?
                }
                _ => need_python()?,
            };
            for _ in 0..rounds {
                total.add(paused(case.name, &python, how, drain));
            }
        }
        Kind::Flood => {
            let python = python_and("haproxy")?;
            for _ in 0..rounds {
                total.add(flood(case.name, &python, drain));
            }
        }
    }
    let Tally { requests, failed, drains, notes } = total;
    let mut summary = format!(
        "{} with the {} drain: {requests} requests, {} failed; preStop phases {drains:?}",
        case.name,
        drain.name(),
        failed.len(),
    );
    for note in &notes {
        let _ = write!(summary, "\n  {note}");
    }
    for failure in failed.iter().take(10) {
        let _ = write!(summary, "\n  failed: {failure}");
    }
    // Straight to stderr: libtest would hide an `eprintln!` of a test that passes.
    let _ = writeln!(io::stderr(), "{summary}");
    Some(Figures { requests, failed, drains, summary })
}

/// What the rounds of a case found: the requests that count, the failed ones, each preStop
/// phase, and a line per round.
#[derive(Default)]
struct Tally {
    requests: usize,
    failed: Vec<String>,
    drains: Vec<Duration>,
    notes: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.failed.extend(other.failed);
        self.drains.extend(other.drains);
        self.notes.extend(other.notes);
    }

    /// Records one request's outcome.
    fn count(&mut self, what: &str, outcome: &str) {
        self.requests += 1;
        if !ok(outcome) {
            self.failed.push(format!("{what}: {outcome}"));
        }
    }

    /// Records the preStop phase lastcall logged.
    fn prestop(&mut self, out: &crate::support::Finished) {
        let logged = out.stderr.lines().find_map(drain_in);
        out.check(logged.is_some(), "lastcall logged no preStop phase");
        self.drains.push(logged.unwrap_or_default());
    }
}

fn need_python() -> Option<String> {
    let python = python3();
    if !required("python3 (apt-get install python3)", python.is_some()) {
        return None;
    }
    python
}

/// Whether an outcome is a whole 2xx answer.
fn ok(outcome: &str) -> bool {
    outcome.len() == 3 && outcome.starts_with('2')
}

/// One lastcall and its app ([`APP`]) on `host`, no load balancer in front.
struct Pod {
    lastcall: Running,
    app: SocketAddr,
    dir: TestDir,
}

impl Pod {
    /// Starts lastcall (endpoint on 127.0.0.1, grace [`GRACE`], `options`; in Kubernetes
    /// with `kube`) around the app (`graceful` or `legacy`, on `host`), and waits until the
    /// app answers.
    fn start(name: &str, python: &str, options: &[String], kube: bool, mode: &str) -> Pod {
        Pod::start_on(name, python, options, kube, mode, "127.0.0.1")
    }

    fn start_on(
        name: &str,
        python: &str,
        options: &[String],
        kube: bool,
        mode: &str,
        host: &str,
    ) -> Pod {
        let dir = TestDir::new(name);
        dir.write("app.py", APP);
        let script = dir.join("app.py").to_string_lossy().into_owned();
        let ip: std::net::IpAddr = host.parse().expect("an IP address");
        // Pods start side by side: one may take a port another just found free; then the
        // loser starts again on others.
        for _ in 0..5 {
            let [app_port, ready_port] = quiet_ports();
            let mut cmd = dir.lastcall();
            if kube {
                // Only read for its presence: nothing is sent there.
                cmd = cmd.env("KUBERNETES_SERVICE_HOST", "10.0.0.1");
            }
            let mut lastcall = cmd
                .args(["--listen", &format!("127.0.0.1:{ready_port}")])
                .args(options)
                .arg("--")
                .args([python, &script, &app_port.to_string(), mode, host])
                .spawn();
            let app = SocketAddr::new(ip, app_port);
            let answers = || {
                Conn::open(app)
                    .is_ok_and(|mut c| c.send("/health", true).is_ok() && c.answer() == "200")
            };
            let start = Instant::now();
            while !answers() && lastcall.try_wait().is_none() && start.elapsed() < TIMEOUT {
                std::thread::sleep(Duration::from_millis(10));
            }
            if answers() {
                return Pod { lastcall, app, dir };
            }
            let out = lastcall.wait_for(Duration::from_secs(15));
            let lost = out.stderr.contains("cannot listen") || out.stderr.contains("in use");
            out.check(lost, "lastcall or the app exited before the app answered /health");
        }
        panic!("no free ports for {name} after 5 tries");
    }

    /// SIGTERM to lastcall.
    fn sigterm(&self) {
        self.lastcall.signal(libc::SIGTERM);
    }

    /// Waits for lastcall's end (it must exit, not be killed) after `drain` and the grace
    /// period, and records its preStop phase.
    fn end(self, drain: Drain, tally: &mut Tally) {
        let out = self.lastcall.wait_for(drain.delay + Duration::from_secs(15));
        out.check(out.code().is_some(), "lastcall must exit, not be killed");
        tally.prestop(&out);
        drop(self.dir);
    }
}

/// The options of lastcall in `drain`; none for [`KUBE_DEFAULT`] in Kubernetes, where that
/// is what no option gives.
fn options(drain: Drain, kube: bool) -> Vec<String> {
    let same = drain.aware == KUBE_DEFAULT.aware && drain.delay == KUBE_DEFAULT.delay;
    let mut options = if kube && same { Vec::new() } else { drain.args() };
    if !kube {
        options.extend(["--grace-period".to_string(), GRACE.to_string()]);
    }
    options
}

/// The start times of a Poisson process of `per_sec` requests a second within `span`, from
/// `seed` (splitmix64; exponential gaps).
pub fn schedule(per_sec: f64, span: Duration, seed: u64) -> Vec<Duration> {
    let mut state = seed;
    let mut uniform = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // In (0, 1]: the logarithm below stays finite.
        ((z >> 11) + 1) as f64 / (1u64 << 53) as f64
    };
    let mut times = Vec::new();
    let mut t = 0.0;
    loop {
        t += -uniform().ln() / per_sec;
        if t >= span.as_secs_f64() {
            return times;
        }
        times.push(Duration::from_secs_f64(t));
    }
}

/// One round of a `kube-*` case: the requests started after the SIGTERM count.
fn kube(name: &str, python: &str, per_sec: f64, drain: Drain, round: usize) -> Tally {
    let seed = SEED + round as u64;
    let times = schedule(per_sec, LEAD + PROPAGATION, seed);
    let pod =
        Pod::start(&format!("{name}-{round}"), python, &options(drain, true), true, "graceful");
    let app = pod.app;
    let start = Instant::now();
    // Each request on a thread of its own, at its time, whatever the others do.
    let results: Vec<(Duration, String)> = std::thread::scope(|s| {
        let mut sent = Vec::new();
        let mut signalled = false;
        for &at in &times {
            if !signalled && at >= LEAD {
                sleep_until(start + LEAD);
                pod.sigterm();
                signalled = true;
            }
            sleep_until(start + at);
            sent.push(s.spawn(move || {
                let outcome = match Conn::open(app) {
                    Ok(mut conn) => match conn.send("/", true) {
                        Ok(()) => conn.answer(),
                        Err(e) => format!("error: sending: {e}"),
                    },
                    Err(e) => format!("error: connecting: {e}"),
                };
                (at, outcome)
            }));
        }
        if !signalled {
            sleep_until(start + LEAD);
            pod.sigterm();
        }
        sent.into_iter().map(|h| h.join().expect("a request thread panicked")).collect()
    });
    let mut tally = Tally::default();
    for (at, outcome) in &results {
        let offset = at.as_secs_f64() - LEAD.as_secs_f64();
        if *at >= LEAD {
            tally.count(&format!("GET / at SIGTERM{offset:+.2}s (seed {seed})"), outcome);
        } else if !ok(outcome) {
            tally.failed.push(format!("GET / at SIGTERM{offset:+.2}s (seed {seed}): {outcome}"));
        }
    }
    pod.end(drain, &mut tally);
    let after = results.iter().filter(|(at, _)| *at >= LEAD).count();
    let prestop = tally.drains.last().copied().unwrap_or_default();
    tally.notes.push(format!(
        "round {round} (seed {seed}): {} requests, {after} after SIGTERM, {} failed; preStop {prestop:?}",
        results.len(),
        tally.failed.len()
    ));
    tally
}

fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        std::thread::sleep(when - now);
    }
}

/// One round of a `paused-*` case.
fn paused(name: &str, python: &str, how: Paused, drain: Drain) -> Tally {
    let mut tally = Tally::default();
    if how == Paused::Nginx {
        return paused_nginx(name, python, drain);
    }
    let host = if how == Paused::Ipv6 { "::1" } else { "127.0.0.1" };
    let pod = Pod::start_on(name, python, &options(drain, false), false, "legacy", host);
    let slow = format!("/work?ms={PAUSE_MS}");
    let mut conn = Conn::open(pod.app).expect("connecting to the app");
    match how {
        Paused::Body => {
            let path = format!("/pause?ms={PAUSE_MS}");
            conn.send(&path, false).expect("sending the request");
            // The head is in: the request is being answered.
            let head = conn.head();
            pod.sigterm();
            let outcome = match head {
                Ok((status, len)) => match conn.body(len) {
                    Ok(()) => status,
                    Err(e) => format!("cut short: {status}: {e}"),
                },
                Err(e) => format!("error: {e}"),
            };
            tally.count(&format!("GET {path}, its head in before SIGTERM"), &outcome);
        }
        Paused::KeepAlive | Paused::Ipv6 | Paused::InDrain => {
            if how == Paused::InDrain {
                pod.sigterm();
                std::thread::sleep(IN_DRAIN);
            }
            tally.count("GET / (quick)", &conn.ask("/"));
            let sent = conn.send(&slow, false);
            if how != Paused::InDrain {
                std::thread::sleep(Duration::from_millis(100));
                pod.sigterm();
            }
            tally.count(&format!("GET {slow} right after it, same connection"), &conn.reply(sent));
        }
        Paused::Nginx => unreachable!("handled above"),
    }
    pod.end(drain, &mut tally);
    tally
}

/// `paused-keepalive` through nginx: one backend, one client on one keep-alive connection.
fn paused_nginx(name: &str, python: &str, drain: Drain) -> Tally {
    let mut tally = Tally::default();
    let dir = TestDir::new(&format!("lb-{name}"));
    dir.write("app.py", APP);
    let app = [python.to_string(), dir.join("app.py").to_string_lossy().into_owned()];
    let (front, [mut a, _]) = backends(&format!("lb-{name}"), &app);
    let mut lb = Balancer::nginx(&dir, &nginx_config(front, dir.path(), std::slice::from_ref(&a)));
    a.start(None, &drain.args(), &["legacy"]);
    a.wait_up(&mut lb);
    let front = SocketAddr::from(([127, 0, 0, 1], front));
    let slow = format!("/work?ms={PAUSE_MS}");
    let mut conn = Conn::open(front).expect("connecting to nginx");
    tally.count("GET / (quick) through nginx", &conn.ask("/"));
    let sent = conn.send(&slow, false);
    std::thread::sleep(Duration::from_millis(100));
    let out = stop(&mut a, drain, || {
        tally.count(&format!("GET {slow} right after it, through nginx"), &conn.reply(sent));
    });
    tally.prestop(&out);
    tally
}

/// SIGTERM to the backend's lastcall; `meanwhile`; then its end, which must be an exit.
fn stop(backend: &mut Backend, drain: Drain, meanwhile: impl FnOnce()) -> crate::support::Finished {
    let running = backend.wrapper.take().expect("started");
    running.signal(libc::SIGTERM);
    meanwhile();
    let out = running.wait_for(drain.delay + Duration::from_secs(15));
    out.check(out.code().is_some(), "lastcall must exit, not be killed");
    out
}

/// The clients of `prober-flood`: 300, from 127.0.1.1 to 127.0.2.44.
pub const FLOOD: usize = 300;
/// How long the load runs before the SIGTERM, once both backends are up: HAProxy checks
/// each one more time (`inter 2s`), so that it has probed backend a twice, as the drain
/// requires of a prober.
const FLOOD_SETTLE: Duration = Duration::from_millis(2500);

/// One round of `prober-flood`: the load's requests count.
fn flood(name: &str, python: &str, drain: Drain) -> Tally {
    let mut tally = Tally::default();
    let dir = TestDir::new(&format!("lb-{name}"));
    dir.write("app.py", APP);
    let app = [python.to_string(), dir.join("app.py").to_string_lossy().into_owned()];
    let (front, mut backends) = backends(&format!("lb-{name}"), &app);
    let backend = format!(
        "    http-reuse always
    no option redispatch
    option httpchk GET /readyz
    http-check send-state
    http-check expect status 200
    default-server inter 2s fall 3 rise 1
{}",
        haproxy_servers(&backends, false)
    );
    let mut lb = Balancer::haproxy(&dir, &haproxy_config(front, &stats_socket(&dir), 30, &backend));
    for b in &mut backends {
        b.start(None, &drain.args(), &["graceful"]);
    }
    for b in &mut backends {
        b.wait_up(&mut lb);
    }
    let began = Instant::now();
    let mut load = Crew::new(began, Duration::from_secs(60));
    load.spawn(move |_| {
        let at = began.elapsed().as_secs_f64();
        ((format!("GET / at {at:.2}s"), get(front, "/")), Duration::from_secs(1))
    });
    std::thread::sleep(FLOOD_SETTLE);
    let ready = SocketAddrV4::new(Ipv4Addr::LOCALHOST, backends[0].ready_port);
    let sigterm = began.elapsed();
    let mut probes = Vec::new();
    let out = stop(&mut backends[0], drain, || probes = flood_probes(ready));
    tally.prestop(&out);
    backends[0].wait_down(&lb);
    // A request routed to backend a before HAProxy took it out may be retrying still: one
    // more second of load, and the crew's stop waits for the requests in flight.
    std::thread::sleep(Duration::from_secs(1));
    for (what, outcome) in load.stop() {
        tally.count(&what, &outcome);
    }
    let answered = probes.iter().filter(|p| p.as_str() == "503").count();
    let (retries, redispatches) = lb.stats.as_ref().expect("HAProxy's stats").retries();
    tally.notes.push(format!(
        "SIGTERM at {:.2}s; {answered} of {} flood probes answered 503; HAProxy retried \
         {retries} connects, redispatched {redispatches}",
        sigterm.as_secs_f64(),
        probes.len()
    ));
    tally
}

/// [`FLOOD`] probes of `/readyz` at `ready`, each from its own loopback address, on a few
/// threads at once; the outcome of each.
fn flood_probes(ready: SocketAddrV4) -> Vec<String> {
    let sources: Vec<Ipv4Addr> = (0..FLOOD as u32)
        .map(|n| Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 1, 1)) + n))
        .collect();
    std::thread::scope(|s| {
        let threads: Vec<_> = sources
            .chunks(FLOOD / 6)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&from| match connect_from(from, ready) {
                            Ok(stream) => match Conn::from(stream) {
                                Ok(mut conn) => match conn.send("/readyz", true) {
                                    Ok(()) => conn.answer(),
                                    Err(e) => format!("error: sending: {e}"),
                                },
                                Err(e) => format!("error: {e}"),
                            },
                            Err(e) => format!("error: connecting from {from}: {e}"),
                        })
                        .collect::<Vec<String>>()
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("a prober thread panicked")).collect()
    })
}

/// A TCP connection to `to` from the address `from` (any port).
fn connect_from(from: Ipv4Addr, to: SocketAddrV4) -> io::Result<TcpStream> {
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain libc call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket of our own, now owned by the stream (closed on every return).
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let local = sockaddr(from, 0);
    // SAFETY: `local` is a valid sockaddr_in of `len` bytes.
    if unsafe { libc::bind(fd, (&raw const local).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let remote = sockaddr(*to.ip(), to.port());
    // SAFETY: as above.
    if unsafe { libc::connect(fd, (&raw const remote).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// A client's HTTP/1.1 connection: requests on it one after another, each answer read whole
/// (the apps and lastcall give every answer a `Content-Length`).
struct Conn {
    stream: TcpStream,
    /// Bytes read past the last answer.
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> io::Result<Conn> {
        Conn::from(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?)
    }

    fn from(stream: TcpStream) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn { stream, buf: Vec::new() })
    }

    /// Sends `GET path` in one write; `close` asks for the connection to end after it.
    fn send(&mut self, path: &str, close: bool) -> io::Result<()> {
        let connection = if close { "close" } else { "keep-alive" };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: {connection}\r\n\r\n");
        self.stream.write_all(request.as_bytes())
    }

    /// Reads more bytes into the buffer.
    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("closed".to_string()),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                // A signal to the test process is no reason to stop reading.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Reads an answer's head: its status code and the length of its body.
    fn head(&mut self) -> Result<(String, usize), String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let status = head
                    .strip_prefix("HTTP/1.")
                    .and_then(|rest| rest.split(' ').nth(1))
                    .ok_or_else(|| format!("no status line in {head:?}"))?;
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (key, value) = l.split_once(':')?;
                        key.eq_ignore_ascii_case("content-length").then(|| value.trim().parse())
                    })
                    .and_then(Result::ok)
                    .ok_or_else(|| format!("{status} with no Content-Length"))?;
                return Ok((status.to_string(), len));
            }
            let had = self.buf.len();
            self.fill().map_err(|e| format!("{e} after {had} bytes of the head"))?;
        }
    }

    /// Reads a body of `len` bytes.
    fn body(&mut self, len: usize) -> Result<(), String> {
        while self.buf.len() < len {
            let had = self.buf.len();
            self.fill().map_err(|e| format!("{e} after {had} of {len} body bytes"))?;
        }
        self.buf.drain(..len);
        Ok(())
    }

    /// `GET path` on the connection kept alive, and [`Conn::answer`].
    fn ask(&mut self, path: &str) -> String {
        let sent = self.send(path, false);
        self.reply(sent)
    }

    /// The answer to a request whose sending gave `sent`.
    fn reply(&mut self, sent: io::Result<()>) -> String {
        match sent {
            Ok(()) => self.answer(),
            Err(e) => format!("error: sending: {e}"),
        }
    }

    /// The next whole answer's status code, or what went wrong (`cut short: 200: ...`,
    /// `error: ...`).
    fn answer(&mut self) -> String {
        match self.head() {
            Ok((status, len)) => match self.body(len) {
                Ok(()) => status,
                Err(e) => format!("cut short: {status}: {e}"),
            },
            Err(e) => format!("error: {e}"),
        }
    }
}
