//! The command line: flags shaped like the CLI ([`Args`]), then one validated [`Config`].
//!
//! Every option also reads a `LASTCALL_*` environment variable. A bad value, or flags that do
//! not go together, become one line naming the option and the value ([`Early::Usage`]); `main`
//! prints it and exits with status 2, and no child is started.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;
use clap::error::ErrorKind;
use log::LevelFilter;

use crate::drain::eyes::DrainPorts;
use crate::endpoint::checks::{Check, MAX_CHECKS};
use crate::endpoint::hooks::{Hook, MAX_HOOKS};
use crate::endpoint::http::Limits;
use crate::init::signals::{Class, Sig};
use crate::machine::{OnWaitTimeout, Policy, Prestop, Restart, RestartOn};
use crate::platform::logger::Format;
use crate::platform::notify;
use crate::platform::sockets::{MAX_SOCKETS, Spec};
use crate::platform::termination;
use crate::platform::users::{self, Credentials};

/// The endpoint's address when `--listen` is not given; 9753 is neither a well-known port
/// nor one of the common exporter ports.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9753";
/// The longest duration accepted, so that deadlines never overflow.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// tini + drain: run COMMAND as a supervised child, reap zombies, forward signals, and on
/// SIGTERM/SIGINT turn unready, wait, stop the child, and SIGKILL it after a grace period.
#[derive(Parser, Debug)]
#[command(
    name = "lastcall",
    version,
    max_term_width = 100,
    override_usage = "lastcall [OPTIONS] [--] COMMAND [ARGS...]"
)]
pub struct Args {
    /// Where the HTTP endpoint (/readyz, /livez, /metrics) listens: IP:PORT, HOST:PORT, :PORT,
    /// or `off`
    #[arg(long, env = "LASTCALL_LISTEN", value_name = "ADDR", help_heading = "Endpoint",
          default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    pub listen: Listen,

    /// Time between turning unready and sending the stop signal; `auto` is 5s in Kubernetes
    /// (KUBERNETES_SERVICE_HOST set) or once /readyz has been requested, else 0
    #[arg(long, env = "LASTCALL_PRESTOP_DELAY", value_name = "DUR|auto",
          default_value = "auto", value_parser = parse_prestop)]
    pub prestop_delay: Prestop,

    /// Time after the stop signal before SIGKILL
    #[arg(long, env = "LASTCALL_GRACE_PERIOD", value_name = "DUR",
          default_value = "20s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// The signal that asks the child to stop [default: the one that started the drain:
    /// TERM for docker stop and Kubernetes, INT for Ctrl-C]
    #[arg(long, env = "LASTCALL_STOP_SIGNAL", value_name = "SIG",
          value_parser = parse_stop_signal)]
    pub stop_signal: Option<Sig>,

    /// Send forwarded and stop signals to the child's whole process group
    #[arg(long, env = "LASTCALL_GROUP", value_parser = BoolishValueParser::new(),
          default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub group: bool,

    /// Exit with 0 instead of CODE (repeatable; the variable takes a comma list), e.g. 143
    #[arg(long, env = "LASTCALL_SUCCESS_EXIT", value_name = "CODE",
          value_delimiter = ',', value_parser = parse_exit_code)]
    pub success_exit: Vec<u8>,

    /// Do not become a child subreaper when not PID 1
    #[arg(long, env = "LASTCALL_NO_SUBREAPER", value_parser = BoolishValueParser::new(),
          default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub no_subreaper: bool,

    /// At most this many connections to the endpoint; a new one beyond it makes room by closing
    /// the one idle longest (then the oldest partial request, then the one whose answers have
    /// not moved for longest)
    #[arg(long, env = "LASTCALL_MAX_CONNECTIONS", help_heading = "Endpoint", value_name = "N",
          default_value = "512", value_parser = parse_max_connections)]
    pub max_connections: usize,

    /// How long a request head may take to arrive before the connection is closed
    #[arg(long, env = "LASTCALL_REQUEST_TIMEOUT", help_heading = "Endpoint", value_name = "DUR",
          default_value = "10s", value_parser = parse_timeout)]
    pub request_timeout: Duration,

    /// How long a keep-alive connection may wait for its next request
    #[arg(long, env = "LASTCALL_IDLE_TIMEOUT", help_heading = "Endpoint", value_name = "DUR",
          default_value = "60s", value_parser = parse_timeout)]
    pub idle_timeout: Duration,

    /// Ready only when a TCP connect to HOST:PORT succeeds (repeatable; HOST is resolved once)
    #[arg(long, env = "LASTCALL_READY_TCP", value_name = "HOST:PORT", value_delimiter = ',',
          value_parser = Check::tcp, help_heading = "Readiness of the app")]
    pub ready_tcp: Vec<Check>,

    /// Ready only when GET URL answers 2xx (plain http://, repeatable)
    #[arg(long, env = "LASTCALL_READY_HTTP", value_name = "URL", value_delimiter = ',',
          value_parser = Check::http, help_heading = "Readiness of the app")]
    pub ready_http: Vec<Check>,

    /// Ready only when `sh -c CMD` exits 0 (repeatable; the variable holds one command)
    #[arg(long, env = "LASTCALL_READY_EXEC", value_name = "CMD",
          value_parser = Check::exec, help_heading = "Readiness of the app")]
    pub ready_exec: Vec<Check>,

    /// Ready only once the child sends READY=1 to NOTIFY_SOCKET (STOPPING=1: unready again)
    #[arg(long, env = "LASTCALL_READY_NOTIFY", value_parser = BoolishValueParser::new(),
          default_value_t = false, num_args = 0, default_missing_value = "true",
          help_heading = "Readiness of the app")]
    pub ready_notify: bool,

    /// Time between two rounds of readiness checks
    #[arg(long, env = "LASTCALL_READY_INTERVAL", value_name = "DUR", default_value = "1s",
          value_parser = parse_timeout, help_heading = "Readiness of the app")]
    pub ready_interval: Duration,

    /// How long one readiness check may take before it counts as failed
    #[arg(long, env = "LASTCALL_READY_TIMEOUT", value_name = "DUR", default_value = "1s",
          value_parser = parse_timeout, help_heading = "Readiness of the app")]
    pub ready_timeout: Duration,

    /// After this, an app that never became ready is logged as such (it keeps running, unready)
    #[arg(long, env = "LASTCALL_STARTUP_TIMEOUT", value_name = "DUR", default_value = "60s",
          value_parser = parse_timeout, help_heading = "Readiness of the app")]
    pub startup_timeout: Duration,

    /// The app's TCP ports that the drain watches: during the preStop delay, stop early once
    /// nothing can be in flight on them and the routers have let go (see --drain-quiet,
    /// --drain-probes). auto: the ports the child's processes and --socket listen on; off:
    /// wait the whole delay
    #[arg(long, env = "LASTCALL_DRAIN_IDLE_PORT", value_name = "auto|off|PORT",
          value_delimiter = ',', default_value = "auto", value_parser = parse_drain_port,
          help_heading = "Drain")]
    pub drain_idle_port: Vec<DrainPort>,

    /// The shortest silence (no request to the app) after which the drain may end early
    #[arg(long, env = "LASTCALL_DRAIN_QUIET", value_name = "DUR", default_value = "1s",
          value_parser = parse_duration, help_heading = "Drain")]
    pub drain_quiet: Duration,

    /// The 503 answers each client that was probing /readyz must have had before the drain
    /// ends early (HAProxy's `fall` and the kubelet's `failureThreshold` default to 3)
    #[arg(long, env = "LASTCALL_DRAIN_PROBES", value_name = "N", default_value = "3",
          value_parser = clap::value_parser!(u32).range(0..=1000), help_heading = "Drain")]
    pub drain_probes: u32,

    /// The shortest preStop phase of a drain that watches the app
    #[arg(long, env = "LASTCALL_DRAIN_MIN", value_name = "DUR", default_value = "1s",
          value_parser = parse_duration, help_heading = "Drain")]
    pub drain_min: Duration,

    /// Before starting the child, wait until this answers (repeatable): tcp://HOST:PORT (a
    /// connect succeeds) or http://HOST:PORT/PATH (a GET answers 2xx); HOST is resolved once
    #[arg(long, env = "LASTCALL_WAIT_FOR", value_name = "URL", value_delimiter = ',',
          value_parser = parse_wait_for, help_heading = "Dependencies and sidecars")]
    pub wait_for: Vec<Awaited>,

    /// Before starting the child, wait until `sh -c CMD` exits 0 (repeatable; the variable
    /// holds one command)
    #[arg(long, env = "LASTCALL_WAIT_FOR_EXEC", value_name = "CMD",
          value_parser = parse_wait_for_exec, help_heading = "Dependencies and sidecars")]
    pub wait_for_exec: Vec<Awaited>,

    /// How long to wait for --wait-for and --wait-for-exec before giving up
    #[arg(long, env = "LASTCALL_WAIT_TIMEOUT", value_name = "DUR", default_value = "60s",
          value_parser = parse_timeout, help_heading = "Dependencies and sidecars")]
    pub wait_timeout: Duration,

    /// When --wait-timeout passes with a dependency down: `exit` (status 124, the child never
    /// starts) or `start` (start the child anyway, with a warning)
    #[arg(long, env = "LASTCALL_ON_WAIT_TIMEOUT", value_name = "exit|start",
          default_value = "exit", value_parser = parse_on_wait_timeout,
          help_heading = "Dependencies and sidecars")]
    pub on_wait_timeout: OnWaitTimeout,

    /// When the child and every process under lastcall are gone, POST to this http:// URL
    /// before exiting (repeatable; e.g. a proxy's quit endpoint); never changes the exit status
    #[arg(long, env = "LASTCALL_ON_EXIT", value_name = "URL", value_delimiter = ',',
          value_parser = Hook::post, help_heading = "Dependencies and sidecars")]
    pub on_exit: Vec<Hook>,

    /// When the child and every process under lastcall are gone, run `sh -c CMD` before
    /// exiting (repeatable, after the --on-exit URLs; the variable holds one command)
    #[arg(long, env = "LASTCALL_ON_EXIT_EXEC", value_name = "CMD",
          value_parser = Hook::exec, help_heading = "Dependencies and sidecars")]
    pub on_exit_exec: Vec<Hook>,

    /// How long each --on-exit or --on-exit-exec hook may take; a command is then killed
    #[arg(long, env = "LASTCALL_ON_EXIT_TIMEOUT", value_name = "DUR", default_value = "2s",
          value_parser = parse_timeout, help_heading = "Dependencies and sidecars")]
    pub on_exit_timeout: Duration,

    /// Bind this socket and pass it to the child by socket activation (repeatable):
    /// [NAME=]tcp://HOST:PORT or [NAME=]unix:/path
    #[arg(long, env = "LASTCALL_SOCKET", value_name = "ADDR", value_delimiter = ',',
          value_parser = Spec::parse, help_heading = "Reload")]
    pub socket: Vec<Spec>,

    /// With --socket: on this signal, start a new child on the same sockets, wait until it is
    /// ready, then drain the old one [default: HUP]
    #[arg(long, env = "LASTCALL_RELOAD_SIGNAL", value_name = "SIG",
          value_parser = parse_reload_signal, help_heading = "Reload")]
    pub reload_signal: Option<Sig>,

    /// Start the child again when it exits on its own while running: `on-failure` (a non-zero
    /// status after --success-exit, or a signal), `always`, or `never`; a drain ends it
    #[arg(long, env = "LASTCALL_RESTART", value_name = "WHEN", default_value = "never",
          value_parser = parse_restart, help_heading = "Restart")]
    pub restart: RestartOn,

    /// The backoff before the first restart within --restart-window; doubled for each
    /// restart made within it
    #[arg(long, env = "LASTCALL_RESTART_DELAY", value_name = "DUR", default_value = "100ms",
          value_parser = parse_duration, help_heading = "Restart")]
    pub restart_delay: Duration,

    /// The longest backoff
    #[arg(long, env = "LASTCALL_RESTART_MAX_DELAY", value_name = "DUR", default_value = "5m",
          value_parser = parse_duration, help_heading = "Restart")]
    pub restart_max_delay: Duration,

    /// At most this many restarts within --restart-window: a child that ends past it is not
    /// restarted, and lastcall exits with its status
    #[arg(long, env = "LASTCALL_RESTART_LIMIT", value_name = "N", default_value = "5",
          value_parser = parse_restart_limit, help_heading = "Restart")]
    pub restart_limit: u32,

    /// The window the restart budget and the backoff count restarts in
    #[arg(long, env = "LASTCALL_RESTART_WINDOW", value_name = "DUR", default_value = "10m",
          value_parser = parse_timeout, help_heading = "Restart")]
    pub restart_window: Duration,

    /// Run the child as USER (name or uid) with its HOME and groups, or with GROUP alone, from
    /// /etc/passwd and /etc/group, and no capability; lastcall stays as it is (root)
    #[arg(long, env = "LASTCALL_USER", value_name = "USER[:GROUP]")]
    pub user: Option<String>,

    /// error, warn, info, debug or trace
    #[arg(long, env = "LASTCALL_LOG_LEVEL", value_name = "LEVEL",
          default_value = "info", value_parser = parse_level)]
    pub log_level: LevelFilter,

    /// How log lines look on stderr: `text` (lastcall: message) or `json` (one object per line,
    /// with ts, level, msg, and the shutdown steps' data)
    #[arg(long, env = "LASTCALL_LOG_FORMAT", value_name = "FORMAT",
          default_value = "text", value_parser = Format::parse)]
    pub log_format: Format,

    /// Where to write, on exit, one line saying why lastcall ended (Kubernetes shows it), or
    /// `off` [default: /dev/termination-log if it exists, else off]
    #[arg(long, env = "LASTCALL_TERMINATION_LOG", value_name = "PATH|off",
          value_parser = parse_termination_log)]
    pub termination_log: Option<TerminationLog>,

    /// The program to supervise, and its arguments
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    pub command: Vec<OsString>,
}

/// One dependency of `--wait-for` or `--wait-for-exec`: how it was named, and how to probe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Awaited {
    pub name: String,
    pub check: Check,
}

/// `--termination-log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TerminationLog {
    Off,
    Path(PathBuf),
}

/// `--listen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

/// Everything `supervisor::run` needs, validated.
pub struct Config {
    /// The program to supervise, and its arguments; never empty.
    pub command: Vec<OsString>,
    /// What the state machine decides by.
    pub policy: Policy,
    /// Where the endpoint listens; `None` for `--listen off`.
    pub listen: Option<SocketAddr>,
    pub limits: Limits,
    /// `--ready-tcp`, `--ready-http`, `--ready-exec`, at most [`MAX_CHECKS`].
    pub checks: Vec<Check>,
    /// `--ready-timeout`: how long one check may take.
    pub check_timeout: Duration,
    /// `--drain-idle-port`.
    pub drain_ports: DrainPorts,
    /// `--socket`, bound by `run` before the child starts; at most [`MAX_SOCKETS`].
    pub sockets: Vec<Spec>,
    pub subreaper: bool,
    pub log_level: LevelFilter,
    pub log_format: Format,
    /// `--termination-log`, its default resolved; `None` for off.
    pub termination_log: Option<PathBuf>,
    /// `--user`, looked up.
    pub user: Option<Credentials>,
    /// systemd's notify socket (NOTIFY_SOCKET), when lastcall runs as a `Type=notify`
    /// service; `policy` says the same.
    pub systemd: Option<notify::Systemd>,
    /// `--wait-for` then `--wait-for-exec`, at most [`MAX_CHECKS`]; their names are the
    /// policy's `wait`.
    pub wait: Vec<Check>,
    /// `--on-exit` then `--on-exit-exec`, at most [`MAX_HOOKS`].
    pub hooks: Vec<Hook>,
    /// `--on-exit-timeout`: how long each hook may take.
    pub hook_timeout: Duration,
}

/// Why lastcall stops before supervising anything.
pub enum Early {
    /// `--help` or `--version`: clap prints it, and lastcall exits with 0.
    Print(clap::Error),
    /// A bad command line, in one line.
    Usage(String),
}

/// The command line and the environment, read and checked.
pub fn parse() -> Result<Config, Early> {
    match Args::try_parse() {
        Ok(args) => args.into_config(),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            Err(Early::Print(e))
        }
        Err(e) if e.kind() == ErrorKind::InvalidUtf8 => Err(Early::Usage(not_utf8())),
        Err(e) => Err(Early::Usage(one_line(&e))),
    }
}

/// clap says only that some argument is not UTF-8: name the variable or the argument.
fn not_utf8() -> String {
    let variable = std::env::vars_os().find(|(key, value)| {
        key.to_str().is_some_and(|k| k.starts_with("LASTCALL_")) && value.to_str().is_none()
    });
    if let Some((key, value)) = variable {
        let (key, value) = (key.to_string_lossy(), value.to_string_lossy());
        return format!("{key}: the value '{value}' is not valid UTF-8");
    }
    let args: Vec<OsString> = std::env::args_os().collect();
    // Only options before `--` or the command need to be text; the command's may be anything.
    let at = args.iter().skip(1).position(|a| a.to_str().is_none()).map(|i| i + 1);
    match at {
        Some(i) => {
            let option = args[i - 1].to_str().filter(|a| a.starts_with("--") && i > 1);
            let value = args[i].to_string_lossy();
            match option {
                Some(option) => format!("{option}: the value '{value}' is not valid UTF-8"),
                None => format!("the argument '{value}' is not valid UTF-8"),
            }
        }
        None => "an argument is not valid UTF-8".to_string(),
    }
}

/// clap's first line says what is wrong and names the option and value; the rest (usage,
/// tips) is left to `--help`.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

impl Args {
    /// Every check that spans more than one flag, and the [`Config`] they make.
    pub fn into_config(self) -> Result<Config, Early> {
        let usage = |text: String| Err(Early::Usage(text));
        if self.command.is_empty() {
            return usage(
                "no command given (usage: lastcall [OPTIONS] [--] COMMAND [ARGS...])".into(),
            );
        }
        let checks: Vec<Check> =
            [self.ready_tcp, self.ready_http, self.ready_exec].into_iter().flatten().collect();
        if checks.len() > MAX_CHECKS {
            return usage(format!("{} readiness checks given; at most {MAX_CHECKS}", checks.len()));
        }
        let awaited: Vec<Awaited> = self.wait_for.into_iter().chain(self.wait_for_exec).collect();
        if awaited.len() > MAX_CHECKS {
            return usage(format!(
                "{} dependencies to wait for; at most {MAX_CHECKS}",
                awaited.len()
            ));
        }
        let hooks: Vec<Hook> = self.on_exit.into_iter().chain(self.on_exit_exec).collect();
        if hooks.len() > MAX_HOOKS {
            return usage(format!("{} on-exit hooks given; at most {MAX_HOOKS}", hooks.len()));
        }
        if self.socket.len() > MAX_SOCKETS {
            return usage(format!("{} sockets given; at most {MAX_SOCKETS}", self.socket.len()));
        }
        let reload_signal = match (self.reload_signal, self.socket.is_empty()) {
            (Some(_), true) => {
                return usage(
                    "--reload-signal needs --socket (without it, signals are forwarded)".into(),
                );
            }
            (sig, false) => Some(sig.unwrap_or(Sig(libc::SIGHUP))),
            (None, true) => None,
        };
        if self.restart_delay > self.restart_max_delay {
            return usage(format!(
                "--restart-delay {} is longer than --restart-max-delay {}",
                humantime::format_duration(self.restart_delay),
                humantime::format_duration(self.restart_max_delay)
            ));
        }
        // Without the subreaper the old child's orphans go to the real init: a restart could
        // neither stop them nor wait for them before the new child starts.
        if self.restart != RestartOn::Never && self.no_subreaper && std::process::id() != 1 {
            return usage(
                "--restart needs lastcall to reap the old child's orphans: not with \
                 --no-subreaper (unless lastcall is PID 1)"
                    .into(),
            );
        }
        let restart = Restart {
            when: self.restart,
            delay: self.restart_delay,
            max_delay: self.restart_max_delay,
            limit: self.restart_limit,
            window: self.restart_window,
        };
        let drain_ports = match drain_ports(&self.drain_idle_port) {
            Some(ports) => ports,
            None => return usage("--drain-idle-port takes auto, off, or ports, not a mix".into()),
        };
        let user = match &self.user {
            Some(spec) => Some(switch_to(spec).map_err(Early::Usage)?),
            None => None,
        };
        let termination_log = match self.termination_log {
            Some(TerminationLog::Off) => None,
            Some(TerminationLog::Path(path)) => Some(path),
            None => termination::default_path(),
        };
        // Read here, as KUBERNETES_SERVICE_HOST is: the policy is whole once it is built.
        let systemd = notify::Systemd::from_env();
        let policy = Policy {
            prestop: self.prestop_delay,
            grace: self.grace_period,
            stop_signal: self.stop_signal,
            group: self.group,
            success_exit: self.success_exit,
            in_kubernetes: std::env::var_os("KUBERNETES_SERVICE_HOST")
                .is_some_and(|v| !v.is_empty()),
            drain_idle: drain_ports != DrainPorts::Off,
            drain_min: self.drain_min,
            drain_quiet: self.drain_quiet,
            drain_probes: self.drain_probes,
            reload_signal,
            checks: !checks.is_empty(),
            notify: self.ready_notify,
            ready_interval: self.ready_interval,
            startup_timeout: self.startup_timeout,
            systemd: systemd.is_some(),
            watchdog: systemd.as_ref().and_then(|s| s.watchdog_every),
            wait: awaited.iter().map(|a| a.name.clone()).collect(),
            wait_timeout: self.wait_timeout,
            on_wait_timeout: self.on_wait_timeout,
            on_exit: !hooks.is_empty(),
            restart,
        };
        Ok(Config {
            command: self.command,
            policy,
            listen: match self.listen {
                Listen::Off => None,
                Listen::On(addr) => Some(addr),
            },
            limits: Limits {
                max_connections: self.max_connections,
                request_timeout: self.request_timeout,
                idle_timeout: self.idle_timeout,
            },
            checks,
            check_timeout: self.ready_timeout,
            drain_ports,
            sockets: self.socket,
            subreaper: !self.no_subreaper,
            log_level: self.log_level,
            log_format: self.log_format,
            termination_log,
            user,
            systemd,
            wait: awaited.into_iter().map(|a| a.check).collect(),
            hooks,
            hook_timeout: self.on_exit_timeout,
        })
    }
}

/// `--user`: only root can switch, and the user must be known, before any child starts.
fn switch_to(spec: &str) -> Result<Credentials, String> {
    // SAFETY: plain libc call.
    users::check_can_switch(unsafe { libc::geteuid() })?;
    users::lookup(spec, Path::new("/"))
}

pub fn parse_termination_log(text: &str) -> Result<TerminationLog, String> {
    match text {
        "" => Err("expected a path, or off".to_string()),
        t if t.eq_ignore_ascii_case("off") => Ok(TerminationLog::Off),
        path => Ok(TerminationLog::Path(PathBuf::from(path))),
    }
}

pub fn parse_listen(text: &str) -> Result<Listen, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Listen::Off);
    }
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_string(),
    };
    match full.to_socket_addrs() {
        Ok(mut addrs) => {
            addrs.next().map(Listen::On).ok_or_else(|| "the host name has no address".to_string())
        }
        Err(_) => Err("expected IP:PORT, HOST:PORT, :PORT or off".to_string()),
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}; expected a duration like 500ms, 5s or 1m30s"))?;
    if d > MAX_DURATION {
        return Err("longer than the limit of 366 days".to_string());
    }
    Ok(d)
}

pub fn parse_prestop(text: &str) -> Result<Prestop, String> {
    if text.trim().eq_ignore_ascii_case("auto") {
        return Ok(Prestop::Auto);
    }
    parse_duration(text).map(Prestop::Fixed).map_err(|e| format!("{e}, or auto"))
}

/// `--stop-signal`: any signal that can end a process; not one that stops, continues or is
/// ignored by default.
pub fn parse_stop_signal(text: &str) -> Result<Sig, String> {
    let sig: Sig = text.parse()?;
    let stops = [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];
    if stops.contains(&sig.0) {
        return Err(format!("{sig} pauses a process, it does not stop it (try TERM, INT or QUIT)"));
    }
    if [libc::SIGCHLD, libc::SIGCONT].contains(&sig.0) {
        return Err(format!("{sig} does not ask a process to stop (try TERM, INT or QUIT)"));
    }
    Ok(sig)
}

/// `--reload-signal`: a signal lastcall would otherwise forward; not one it acts on itself
/// (TERM and INT drain, CHLD reaps), cannot catch, ignores, or that means a crash.
pub fn parse_reload_signal(text: &str) -> Result<Sig, String> {
    let sig: Sig = text.parse()?;
    let crash = [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP];
    match crate::init::signals::class(sig) {
        Class::Forward if !crash.contains(&sig.0) => Ok(sig),
        Class::Drain => Err(format!("{sig} starts the drain; it cannot also reload (try HUP)")),
        _ => Err(format!("{sig} cannot be the reload signal (try HUP or USR2)")),
    }
}

/// `--wait-for`: `tcp://HOST:PORT` or `http://HOST[:PORT][/PATH]`.
pub fn parse_wait_for(text: &str) -> Result<Awaited, String> {
    let text = text.trim();
    let expected = "expected tcp://HOST:PORT or http://HOST:PORT/PATH";
    let scheme = text.find("://").map(|i| text[..i].to_ascii_lowercase());
    let check = match scheme.as_deref() {
        Some("tcp") => Check::tcp(&text[6..]).map_err(|e| format!("{e}; {expected}"))?,
        Some("http") => Check::http(text)?,
        Some("https") => return Err("https is not supported: --wait-for uses plain HTTP".into()),
        _ => return Err(expected.to_string()),
    };
    Ok(Awaited { name: text.to_string(), check })
}

/// `--wait-for-exec`: a command for `sh -c`.
pub fn parse_wait_for_exec(text: &str) -> Result<Awaited, String> {
    Ok(Awaited { name: format!("exec '{text}'"), check: Check::exec(text)? })
}

pub fn parse_on_wait_timeout(text: &str) -> Result<OnWaitTimeout, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "exit" => Ok(OnWaitTimeout::Exit),
        "start" => Ok(OnWaitTimeout::Start),
        _ => Err("expected exit or start".to_string()),
    }
}

pub fn parse_restart(text: &str) -> Result<RestartOn, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "never" => Ok(RestartOn::Never),
        "on-failure" => Ok(RestartOn::OnFailure),
        "always" => Ok(RestartOn::Always),
        _ => Err("expected on-failure, always or never".to_string()),
    }
}

pub fn parse_restart_limit(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => {
            Err("expected a number of restarts from 1 to 10000 (--restart never for none)"
                .to_string())
        }
    }
}

pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be longer than 0s".to_string()),
        d => Ok(d),
    }
}

pub fn parse_max_connections(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err("expected a number of connections from 1 to 1000000".to_string()),
    }
}

/// One value of `--drain-idle-port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainPort {
    Auto,
    Off,
    Port(u16),
}

pub fn parse_drain_port(text: &str) -> Result<DrainPort, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(DrainPort::Auto),
        "off" => Ok(DrainPort::Off),
        _ => parse_port(text)
            .map(DrainPort::Port)
            .map_err(|_| "expected auto, off, or a port from 1 to 65535".to_string()),
    }
}

/// `None` for a mix of auto, off and ports.
fn drain_ports(values: &[DrainPort]) -> Option<DrainPorts> {
    match values {
        [] | [DrainPort::Auto] => Some(DrainPorts::Auto),
        [DrainPort::Off] => Some(DrainPorts::Off),
        _ => values
            .iter()
            .map(|v| match v {
                DrainPort::Port(p) => Some(*p),
                _ => None,
            })
            .collect::<Option<Vec<u16>>>()
            .map(DrainPorts::Ports),
    }
}

pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err("expected a port from 1 to 65535".to_string()),
    }
}

pub fn parse_exit_code(text: &str) -> Result<u8, String> {
    text.trim().parse::<u8>().map_err(|_| "expected an exit code from 0 to 255".to_string())
}

pub fn parse_level(text: &str) -> Result<LevelFilter, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err("expected error, warn, info, debug or trace".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1000years").is_err());
        assert_eq!(parse_prestop("AUTO"), Ok(Prestop::Auto));
        assert_eq!(parse_prestop("2s"), Ok(Prestop::Fixed(Duration::from_secs(2))));
    }

    #[test]
    fn termination_log_paths() {
        assert_eq!(parse_termination_log("off"), Ok(TerminationLog::Off));
        assert_eq!(parse_termination_log("OFF"), Ok(TerminationLog::Off));
        assert_eq!(
            parse_termination_log("/tmp/why"),
            Ok(TerminationLog::Path(PathBuf::from("/tmp/why")))
        );
        assert!(parse_termination_log("").is_err());
        let config = |argv: &[&str]| match Args::try_parse_from(argv).map(Args::into_config) {
            Ok(Ok(config)) => config,
            _ => panic!("{argv:?} rejected"),
        };
        assert_eq!(config(&["lastcall", "--termination-log", "off", "true"]).termination_log, None);
        let given = config(&["lastcall", "--termination-log", "/x/y", "true"]).termination_log;
        assert_eq!(given, Some(PathBuf::from("/x/y")));
        // Not given: Kubernetes' file when it exists.
        let default = config(&["lastcall", "true"]).termination_log;
        assert_eq!(default, termination::default_path());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("off"), Ok(Listen::Off));
        assert_eq!(parse_listen(":8080"), Ok(Listen::On("0.0.0.0:8080".parse().unwrap())));
        assert_eq!(parse_listen("[::1]:80"), Ok(Listen::On("[::1]:80".parse().unwrap())));
        assert!(parse_listen("127.0.0.1").is_err());
        assert!(parse_listen("127.0.0.1:99999").is_err());
        assert!(parse_listen("").is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_timeout("0s").is_err());
        assert_eq!(parse_max_connections("1"), Ok(1));
        assert!(parse_max_connections("0").is_err());
        assert!(parse_max_connections("many").is_err());
    }

    #[test]
    fn exit_codes_and_levels() {
        assert_eq!(parse_exit_code("143"), Ok(143));
        assert!(parse_exit_code("256").is_err());
        assert!(parse_exit_code("-1").is_err());
        assert_eq!(parse_level("DEBUG"), Ok(LevelFilter::Debug));
        assert!(parse_level("loud").is_err());
    }

    #[test]
    fn signals_that_cannot_do_the_job() {
        for bad in ["STOP", "TSTP", "TTIN", "TTOU", "CHLD", "CONT", "RTMIN++1"] {
            assert!(parse_stop_signal(bad).is_err(), "--stop-signal {bad}");
        }
        for good in ["TERM", "INT", "QUIT", "KILL", "USR1", "WINCH", "RTMIN+3"] {
            assert!(parse_stop_signal(good).is_ok(), "--stop-signal {good}");
        }
        for bad in ["TERM", "INT", "KILL", "STOP", "CHLD", "TTIN", "TTOU", "SEGV", "BUS"] {
            assert!(parse_reload_signal(bad).is_err(), "--reload-signal {bad}");
        }
        for good in ["HUP", "USR1", "USR2", "WINCH", "RTMIN+1"] {
            assert!(parse_reload_signal(good).is_ok(), "--reload-signal {good}");
        }
        assert_eq!(
            parse_reload_signal("TERM").unwrap_err(),
            "SIGTERM starts the drain; it cannot also reload (try HUP)"
        );
    }

    fn usage(argv: &[&str]) -> String {
        match Args::try_parse_from(argv).map(Args::into_config) {
            Ok(Err(Early::Usage(text))) => text,
            Ok(Ok(_)) => panic!("{argv:?} was accepted"),
            _ => panic!("{argv:?} did not parse"),
        }
    }

    #[test]
    fn restart_flags() {
        let config =
            |argv: &[&str]| Args::try_parse_from(argv).ok().and_then(|a| a.into_config().ok());
        let Some(c) = config(&["lastcall", "true"]) else { panic!("defaults refused") };
        assert_eq!(c.policy.restart, Restart::DEFAULT, "never, 100ms to 5m, 5 in 10m");
        let argv = ["lastcall", "--restart", "on-failure", "--restart-limit", "3", "true"];
        let Some(c) = config(&argv) else { panic!("{argv:?} refused") };
        assert_eq!((c.policy.restart.when, c.policy.restart.limit), (RestartOn::OnFailure, 3));
        assert_eq!(parse_restart("Always"), Ok(RestartOn::Always));
        assert_eq!(parse_restart("sometimes").unwrap_err(), "expected on-failure, always or never");
        assert!(parse_restart_limit("0").is_err() && parse_restart_limit("x").is_err());
        assert_eq!(
            usage(&["lastcall", "--restart-delay", "10s", "--restart-max-delay", "1s", "true"]),
            "--restart-delay 10s is longer than --restart-max-delay 1s"
        );
        assert!(Args::try_parse_from(["lastcall", "--restart-window", "0s", "true"]).is_err());
        // Not PID 1 here: the old child's orphans would go to the real init, out of reach.
        assert_eq!(
            usage(&["lastcall", "--restart", "always", "--no-subreaper", "true"]),
            "--restart needs lastcall to reap the old child's orphans: not with --no-subreaper \
             (unless lastcall is PID 1)"
        );
    }

    #[test]
    fn flags_that_do_not_go_together() {
        assert!(usage(&["lastcall"]).starts_with("no command given"));
        assert!(usage(&["lastcall", "--group"]).starts_with("no command given"));
        assert_eq!(
            usage(&["lastcall", "--reload-signal", "USR2", "true"]),
            "--reload-signal needs --socket (without it, signals are forwarded)"
        );
        let many: Vec<String> = (0..65).map(|i| format!("--ready-exec=exit {i}")).collect();
        let mut argv = vec!["lastcall"];
        argv.extend(many.iter().map(String::as_str));
        argv.push("true");
        assert_eq!(usage(&argv), "65 readiness checks given; at most 64");
    }

    #[test]
    fn the_user_is_looked_up_before_anything_starts() {
        // SAFETY: plain libc call.
        let root = unsafe { libc::geteuid() } == 0;
        let err = usage(&["lastcall", "--user", "no-such-user-for-lastcall", "true"]);
        match root {
            true => {
                assert_eq!(err, "unknown user 'no-such-user-for-lastcall' (not in /etc/passwd)")
            }
            false => assert!(err.starts_with("--user needs lastcall to run as root"), "{err}"),
        }
        if root {
            let argv = ["lastcall", "--user", "0:0", "true"];
            let Ok(Ok(config)) = Args::try_parse_from(argv).map(Args::into_config) else {
                panic!("rejected");
            };
            let user = config.user.expect("a user");
            assert_eq!((user.uid, user.gid, user.groups), (0, 0, vec![0]));
        }
    }

    #[test]
    fn a_config_from_flags() {
        let argv = ["lastcall", "--socket", "tcp://127.0.0.1:0", "--ready-notify", "--", "app"];
        let Ok(Ok(config)) = Args::try_parse_from(argv).map(Args::into_config) else {
            panic!("rejected");
        };
        assert_eq!(config.policy.reload_signal, Some(Sig(libc::SIGHUP)), "HUP with --socket");
        assert!(config.policy.notify && !config.policy.checks);
        assert_eq!(config.command, ["app"]);
        assert_eq!(config.listen, Some("0.0.0.0:9753".parse().unwrap()));
        // The policy is whole: what it says of systemd is what the environment said.
        assert_eq!(config.policy.systemd, config.systemd.is_some());
        let watchdog = config.systemd.as_ref().and_then(|s| s.watchdog_every);
        assert_eq!(config.policy.watchdog, watchdog);
    }

    #[test]
    fn dependencies_and_hooks() {
        let up = parse_wait_for("tcp://127.0.0.1:15021").unwrap();
        assert_eq!(up.name, "tcp://127.0.0.1:15021");
        assert!(matches!(up.check, Check::Tcp { addr, .. } if addr.port() == 15021));
        let up = parse_wait_for("HTTP://127.0.0.1:15021/healthz/ready").unwrap();
        assert!(matches!(up.check, Check::Http { ref path, .. } if path == "/healthz/ready"));
        assert_eq!(
            parse_wait_for("127.0.0.1:15021").unwrap_err(),
            "expected tcp://HOST:PORT or http://HOST:PORT/PATH"
        );
        assert!(parse_wait_for("tcp://127.0.0.1").unwrap_err().starts_with("expected HOST:PORT"));
        assert!(parse_wait_for("https://x/").unwrap_err().contains("https"));
        assert_eq!(parse_wait_for_exec("pg_isready").unwrap().name, "exec 'pg_isready'");
        assert!(parse_wait_for_exec("").is_err());
        assert_eq!(parse_on_wait_timeout("Start"), Ok(OnWaitTimeout::Start));
        assert!(parse_on_wait_timeout("later").is_err());

        let argv = [
            "lastcall",
            "--wait-for",
            "tcp://127.0.0.1:1",
            "--wait-for-exec",
            "true",
            "--on-exit-exec",
            "echo bye",
            "--on-exit",
            "http://127.0.0.1:15020/quitquitquit",
            "app",
        ];
        let Ok(Ok(config)) = Args::try_parse_from(argv).map(Args::into_config) else {
            panic!("rejected");
        };
        assert_eq!(config.policy.wait, ["tcp://127.0.0.1:1", "exec 'true'"]);
        assert_eq!(config.wait.len(), 2);
        assert_eq!(config.policy.wait_timeout, Duration::from_secs(60), "the default");
        assert_eq!(config.policy.on_wait_timeout, OnWaitTimeout::Exit, "the default");
        let hooks: Vec<String> = config.hooks.iter().map(Hook::to_string).collect();
        assert_eq!(hooks, ["POST http://127.0.0.1:15020/quitquitquit", "exec 'echo bye'"]);
        assert!(config.policy.on_exit);
        assert_eq!(config.hook_timeout, Duration::from_secs(2), "the default");
    }

    #[test]
    fn command_after_double_dash_keeps_its_flags() {
        let args = Args::try_parse_from(["lastcall", "--group", "--", "sh", "-c", "--x"]).unwrap();
        assert!(args.group);
        assert_eq!(args.command, ["sh", "-c", "--x"]);
        let args = Args::try_parse_from(["lastcall", "sleep", "--help"]).unwrap();
        assert_eq!(args.command, ["sleep", "--help"]);
    }
}
