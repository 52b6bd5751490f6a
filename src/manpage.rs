//! The man page and the shell completions, generated from the clap definitions behind
//! `--help` and checked in (`man/lastcall.1`, `completions/`) so that packaging needs no build
//! step of its own.
//!
//! The tests here render them again and fail when a checked-in file disagrees with the flags;
//! `LASTCALL_UPDATE_GENERATED=1 cargo test manpage` rewrites the files instead. The OPTIONS
//! sections and the list of `LASTCALL_*` variables come from clap; the rest of the page
//! (the shutdown timeline, signals, exit status, the other variables, examples) is written
//! below in roff.

use std::fs;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Args;

/// Set to `1` to rewrite the checked-in files instead of comparing them.
const UPDATE: &str = "LASTCALL_UPDATE_GENERATED";

/// Written here rather than rendered by clap_mangen, whose DESCRIPTION would only repeat the
/// `about` line that NAME already shows.
const DESCRIPTION: &str = r#".SH DESCRIPTION
\fBlastcall\fR starts \fICOMMAND\fR as its one child and supervises it.
It is meant to be the entry point of a container (PID 1), the wrapper of a Kubernetes
container instead of a preStop hook, or the main process of a systemd unit.
For the child's whole life, lastcall:
.IP \(bu 2
reaps every zombie, as PID 1 or, when it is not PID 1, as a child subreaper;
.IP \(bu 2
forwards signals to the child (see \fBSIGNALS\fR) and exits with the child's status
(see \fBEXIT STATUS\fR);
.IP \(bu 2
serves an HTTP endpoint (\fB\-\-listen\fR, port 9753 by default):
\fBGET /readyz\fR answers 200 while the child runs and is ready (see the readiness options),
503 from the moment the drain starts;
\fBGET /livez\fR answers 200 while the child is alive, the drain included, and 503 once it
has exited (with \fB\-\-restart\fR, 200 while it is being restarted within the budget).
.SS "The shutdown timeline"
On SIGTERM or SIGINT, lastcall drains:
.IP 1. 4
\fB/readyz\fR answers 503 at once, so that load balancers stop sending new work.
.IP 2. 4
lastcall waits the preStop delay (\fB\-\-prestop\-delay\fR).
\fBauto\fR is 5s when running in Kubernetes (\fBKUBERNETES_SERVICE_HOST\fR set) or once
\fB/readyz\fR has been requested, and 0 otherwise; the log says which applied.
The wait ends early only on evidence (\fB\-\-drain\-idle\-port\fR, \fBauto\fR by
default): no connection to the app's ports busy with a request or left unsure (the app
wrote last, unless its load balancer says it has nothing in flight); every client that was
probing \fB/readyz\fR answered 503 \fB\-\-drain\-probes\fR times, or, with no such
client and always in Kubernetes, the traffic stopped for long enough to rule out, at 1 in
1000, traffic still arriving at the rate seen; no request for \fB\-\-drain\-quiet\fR;
and \fB\-\-drain\-min\fR over (2s at least in Kubernetes). Where lastcall cannot tell, it
waits the whole delay.
.IP 3. 4
It sends the stop signal to the child (to its process group with \fB\-\-group\fR):
\fB\-\-stop\-signal\fR, or else the signal that started the drain.
.IP 4. 4
When the grace period (\fB\-\-grace\-period\fR) is over, it sends SIGKILL to the child's
process group.
.PP
A second SIGTERM or SIGINT skips what is left of the preStop delay; if the stop signal has
already been sent, it is passed on to the child as it is.
A third sends SIGKILL to the child's process group at once.
If the child exits at any point, lastcall stops waiting.
Processes the child leaves behind get the stop signal, then SIGKILL when the grace period
ends, and are reaped before lastcall exits: nothing started under lastcall outlives it.
.PP
For lastcall's own SIGKILL to come before the platform's, and so for the child's grace
period to be honoured, the platform must wait at least
.PP
.RS
preStop delay + grace period + a margin of a few seconds
.RE
.PP
after its stop signal: \fBterminationGracePeriodSeconds\fR in Kubernetes (default 30, which
fits the defaults: 5s + 20s + 5s), \fBdocker stop \-\-time\fR or
\fBdocker run \-\-stop\-timeout\fR (default 10), \fBTimeoutStopSec=\fR in systemd (default 90s).
.SS "Restart"
With \fB\-\-restart on\-failure\fR (a non-zero status after \fB\-\-success\-exit\fR, or a
signal) or \fB\-\-restart always\fR, a child that exits on its own while running is started
again, on the same \fB\-\-socket\fRs, so that clients wait in the backlog instead of being
refused.
\fB/readyz\fR answers 503 from the exit until the new child is ready by the same checks.
Processes the old child left get the stop signal, then SIGKILL after the grace period, and
the new child starts only once they are gone and the backoff is over: \fB\-\-restart\-delay\fR
(100ms) doubled for each restart made within \fB\-\-restart\-window\fR (10m), at most
\fB\-\-restart\-max\-delay\fR (5m).
A child that ends with \fB\-\-restart\-limit\fR (5) restarts made within the window is not
restarted: lastcall exits with its status, and its termination message says how many
restarts there were.
Once a drain has begun, no child is restarted; a SIGTERM or SIGINT during a backoff ends the
run at once, with the status of the child that ended.
\fB\-\-restart\fR is refused with \fB\-\-no\-subreaper\fR unless lastcall is PID 1: the old
child's orphans would be out of its reach.
"#;

const SIGNALS: &str = r#".SH SIGNALS
.TP
.B SIGTERM\fR, \fBSIGINT
Start the drain; a second one hurries it, a third kills (see \fBThe shutdown timeline\fR).
.TP
.B SIGCHLD
Reap, until no exited process is left.
.TP
.B SIGHUP\fR, \fBSIGQUIT\fR, \fBSIGUSR1\fR, \fBSIGUSR2\fR, \fBSIGWINCH\fR, \fBSIGCONT\fR, \fBSIGTSTP\fR, \fBSIGALRM\fR, \fBSIGPIPE\fR, \fBSIGURG\fR, \fBSIGVTALRM\fR, \fBSIGPROF\fR, \fBSIGIO\fR, \fBSIGPWR\fR, \fBSIGXCPU\fR, \fBSIGXFSZ\fR, \fBSIGSTKFLT\fR, \fBSIGABRT\fR, \fBSIGBUS\fR, \fBSIGTRAP\fR, \fBSIGSYS\fR, real-time signals
Forwarded to the child (to its process group with \fB\-\-group\fR) as they arrive, in every
phase; but see the reload signal below.
.TP
.RB "the reload signal (" \-\-reload\-signal ", SIGHUP by default), with " \-\-socket
Not forwarded: lastcall starts a new child on the same sockets, waits until it is ready, then
drains the old one.
.TP
.B SIGSEGV\fR, \fBSIGFPE\fR, \fBSIGILL
Forwarded when another process sent them (\fBkill \-SEGV\fR); a real fault of lastcall's own
still kills it.
.TP
.B SIGTTIN\fR, \fBSIGTTOU
Ignored, so that lastcall never stops on terminal output.
.TP
.B SIGKILL\fR, \fBSIGSTOP
Cannot be caught.
.PP
The child runs in its own process group and, if lastcall's group held the terminal's
foreground, takes it, so that Ctrl-C in a terminal reaches the child directly.
The child gets back the signal mask and the ignored signals that lastcall inherited.
"#;

const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
.I the child's exit code
The child exited.
.TP
.I 128+N
The child was killed by signal \fIN\fR: 143 for SIGTERM, 137 for SIGKILL.
.TP
.B 0
The child's status (its code, or 128+N) is listed in \fB\-\-success\-exit\fR.
.TP
.B 2
The command line or an option's variable is wrong; no child was started.
.TP
.I the last child's status
With \fB\-\-restart\fR: the restart budget was exhausted, a SIGTERM or SIGINT came during a
backoff, or the new child could not be started.
.TP
.B 125
lastcall itself failed before starting the child, for example because the listen address is
in use.
.TP
.B 126
The command was found but could not be run (not executable), or the switch to
\fB\-\-user\fR failed in the child.
.TP
.B 127
The command was not found.
.PP
125, 126 and 127 are used as \fBenv\fR(1), \fBtimeout\fR(1) and the shell use them.
.PP
Under systemd, a child killed by the SIGTERM that lastcall sends as its stop signal makes
lastcall exit with 143, which systemd counts as a failure; list it in the unit's \fBSuccessExitStatus=\fR, or give
\fB\-\-success\-exit 143\fR to turn it into 0 for every platform.
.SS "Why it ended"
Just before it exits, lastcall writes one line saying why to the \fB\-\-termination\-log\fR
file (by default \fB/dev/termination\-log\fR when it exists, as Kubernetes makes it for every
container, which then shows the line in \fBkubectl describe pod\fR).
At most 4096 bytes, never a partial UTF\-8 character, no newline; for example:
.PP
.RS
.nf
child exited 0 after SIGTERM (drain 5.0s, stopped 1.2s later)
child killed by SIGKILL: grace period of 20.0s expired
child killed by the kernel's OOM killer (memory limit 256 MiB)
exec failed: /app/server: not found
.fi
.RE
.PP
A SIGKILL is told apart from an OOM kill by lastcall's memory cgroup's \fBoom_kill\fR
counter (cgroup v2 \fBmemory.events\fR, v1 \fBmemory.oom_control\fR), read at start and
whenever a process that died of SIGKILL is reaped; an OOM kill is also logged at warn.
Without a memory cgroup lastcall can read, it makes no such claim.
A file that cannot be written is logged at debug and changes nothing else.
A bad command line (exit status 2) writes no message: Kubernetes'
\fBterminationMessagePolicy: FallbackToLogsOnError\fR shows lastcall's error line instead.
"#;

/// Comes before the `LASTCALL_*` list, which is generated.
const ENVIRONMENT: &str = r#".SH ENVIRONMENT
Every option can also be set through its variable; the option on the command line wins.
Boolean variables take 1/0, true/false, yes/no or on/off.
The variables of repeatable options take a comma-separated list, except
\fBLASTCALL_READY_EXEC\fR, which holds one command.
A bad value is a usage error (exit status 2), as it is on the command line.
"#;

/// Follows the generated `LASTCALL_*` list.
const ENVIRONMENT_OTHERS: &str = r#".TP
.B KUBERNETES_SERVICE_HOST
Set and not empty: lastcall runs in Kubernetes, and \fB\-\-prestop\-delay auto\fR is 5s.
.TP
.B NOTIFY_SOCKET
lastcall runs under systemd with \fBType=notify\fR (a path, or \fB@\fIname\fR for an
abstract socket).
lastcall sends \fBREADY=1\fR when \fB/readyz\fR would first answer 200,
\fBSTOPPING=1\fR when the drain starts, and a \fBSTATUS=\fR line at each phase change.
The child does not see this socket: with \fB\-\-ready\-notify\fR its \fBNOTIFY_SOCKET\fR is
lastcall's own, private one; without, the variable is removed from its environment.
.TP
.B WATCHDOG_USEC\fR, \fBWATCHDOG_PID
Set by systemd's \fBWatchdogSec=\fR: lastcall sends \fBWATCHDOG=1\fR every half of
\fBWATCHDOG_USEC\fR while its event loop runs and the child is alive, unless
\fBWATCHDOG_PID\fR names another process.
.TP
.B LISTEN_FDS\fR, \fBLISTEN_PID\fR, \fBLISTEN_FDNAMES
Socket activation.
When \fBLISTEN_PID\fR is lastcall's pid, the file descriptors from 3 on are passed to the
child in the same order with \fBLISTEN_FDS\fR and \fBLISTEN_FDNAMES\fR unchanged, and
\fBLISTEN_PID\fR is set to the child's own pid before it starts.
Otherwise, no descriptor that lastcall opened itself reaches the child.
With \fB\-\-socket\fR, lastcall binds the sockets itself and sets these variables for each
child it starts.
"#;

const EXAMPLES: &str = r#".SH EXAMPLES
As the entry point of a container image:
.PP
.RS
.nf
ENTRYPOINT ["lastcall", "\-\-"]
CMD ["my\-app", "\-\-port", "8080"]
.fi
.RE
.PP
In a terminal: \fBcurl localhost:9753/readyz\fR answers \fBready\fR; press Ctrl-C and watch
the shutdown on standard error:
.PP
.RS
.nf
lastcall \-\-prestop\-delay 2s \-\- sh \-c 'echo serving; exec sleep 600'
.fi
.RE
.PP
Ready only once the app answers its own health check, with a longer grace period for a JVM
that exits with 143 on SIGTERM:
.PP
.RS
.nf
lastcall \-\-ready\-http http://127.0.0.1:8080/health \e
    \-\-grace\-period 40s \-\-success\-exit 143 \-\- java \-jar app.jar
.fi
.RE
.PP
As root, with the app running as the image's \fBapp\fR user (instead of
\fBgosu\fR or \fBsu\-exec\fR), and JSON log lines for the log collector:
.PP
.RS
.nf
lastcall \-\-user app \-\-log\-format json \-\- my\-app \-\-port 8080
.fi
.RE
.PP
In Kubernetes, with the readiness probe on \fB/readyz\fR and the liveness probe on
\fB/livez\fR, port 9753, and no preStop hook:
.PP
.RS
.nf
command: ["lastcall", "\-\-"]
args: ["my\-app", "\-\-port", "8080"]
terminationGracePeriodSeconds: 30   # in the pod spec: 5s (auto) + 20s + 5s
.fi
.RE
.PP
As a systemd service (\fBKillMode=mixed\fR: systemd sends SIGTERM to lastcall alone, and
SIGKILL to what is left of the unit only after \fBTimeoutStopSec=\fR):
.PP
.RS
.nf
[Service]
Type=notify
ExecStart=/usr/bin/lastcall \-\-prestop\-delay 0s \-\-grace\-period 20s \e
    \-\- /usr/local/bin/legacy\-app
KillMode=mixed
TimeoutStopSec=30s
SuccessExitStatus=143
.fi
.RE
.PP
The package installs these examples, and a socket-activated pair, in
\fI/usr/share/doc/lastcall/examples/\fR.
"#;

const SEE_ALSO: &str = r#".SH "SEE ALSO"
\fBsystemd.service\fR(5), \fBsystemd.kill\fR(5), \fBsystemd.socket\fR(5),
\fBsd_notify\fR(3), \fBsd_listen_fds\fR(3), \fBdocker\-stop\fR(1)
"#;

/// One of clap_mangen's section renderers.
type Render = fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>;

/// The whole page: clap's sections with the hand-written ones around them.
fn man_page() -> String {
    let man = clap_mangen::Man::new(Args::command()).title("LASTCALL").manual("User Commands");
    let mut out: Vec<u8> = Vec::new();
    let clap_part = |out: &mut Vec<u8>, render: Render| render(&man, out).expect("rendering");
    clap_part(&mut out, clap_mangen::Man::render_title);
    // No hyphenation: options and variable names must read as they are typed.
    out.extend_from_slice(b".nh\n");
    clap_part(&mut out, clap_mangen::Man::render_name_section);
    clap_part(&mut out, clap_mangen::Man::render_synopsis_section);
    out.extend_from_slice(DESCRIPTION.as_bytes());
    clap_part(&mut out, clap_mangen::Man::render_options_section);
    out.extend_from_slice(SIGNALS.as_bytes());
    out.extend_from_slice(EXIT_STATUS.as_bytes());
    out.extend_from_slice(ENVIRONMENT.as_bytes());
    out.extend_from_slice(lastcall_variables().as_bytes());
    out.extend_from_slice(ENVIRONMENT_OTHERS.as_bytes());
    out.extend_from_slice(EXAMPLES.as_bytes());
    out.extend_from_slice(SEE_ALSO.as_bytes());
    String::from_utf8(out).expect("the page is UTF-8")
}

/// One entry per option that has a variable, in the order of `--help`.
fn lastcall_variables() -> String {
    let command = Args::command();
    let mut out = String::new();
    for arg in command.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let env = env.to_str().expect("variable names are ASCII");
        out.push_str(&format!(
            ".TP\n.B {env}\nAs \\fB{}\\fR.\n",
            roff_dashes(&format!("--{long}"))
        ));
    }
    out
}

/// A hyphen in roff may print as a typographic one; `\-` is the ASCII minus an option needs.
fn roff_dashes(text: &str) -> String {
    text.replace('-', "\\-")
}

fn completion(shell: Shell) -> String {
    let mut out: Vec<u8> = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "lastcall", &mut out);
    String::from_utf8(out).expect("completions are UTF-8")
}

/// Fails unless the file at `path` (from the crate root) holds `generated`; with
/// `LASTCALL_UPDATE_GENERATED=1`, writes it instead.
fn check_generated(path: &str, generated: &str) {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if std::env::var_os(UPDATE).is_some_and(|v| v == "1") {
        if let Some(dir) = full.parent() {
            fs::create_dir_all(dir).expect("creating the directory");
        }
        fs::write(&full, generated).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        return;
    }
    let checked_in = fs::read_to_string(&full).unwrap_or_default();
    if checked_in == generated {
        return;
    }
    let (line, ours, theirs) = checked_in
        .lines()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(generated.lines().map(Some).chain(std::iter::repeat(None)))
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(n, (a, b))| (n + 1, a.unwrap_or("<end of file>"), b.unwrap_or("<end of file>")))
        .unwrap_or((0, "", "(only line endings differ)"));
    panic!(
        "{path} does not match the flags in src/cli.rs (first difference at line {line}):\n  \
         checked in: {ours}\n  generated:  {theirs}\n\
         Regenerate it with: {UPDATE}=1 cargo test manpage"
    );
}

/// The `--names` that roff text mentions, from its `\-\-` escapes.
fn mentioned_flags(roff: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (start, _) in roff.match_indices(r"\-\-") {
        let rest = &roff[start + 4..];
        let mut name = String::new();
        let mut chars = rest;
        loop {
            if let Some(after) = chars.strip_prefix(r"\-") {
                name.push('-');
                chars = after;
            } else if let Some(c) = chars.chars().next().filter(|c| c.is_ascii_lowercase()) {
                name.push(c);
                chars = &chars[1..];
            } else {
                break;
            }
        }
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

#[test]
fn man_page_matches_the_flags() {
    check_generated("man/lastcall.1", &man_page());
}

#[test]
fn completions_match_the_flags() {
    check_generated("completions/lastcall.bash", &completion(Shell::Bash));
    check_generated("completions/_lastcall", &completion(Shell::Zsh));
    check_generated("completions/lastcall.fish", &completion(Shell::Fish));
}

/// The hand-written sections name options too: a renamed or removed flag must not survive
/// there. Options of other programs quoted in the examples are listed here.
#[test]
fn hand_written_sections_name_real_flags() {
    let others = ["time", "stop-timeout", "port", "jar"];
    let longs: Vec<String> =
        Args::command().get_arguments().filter_map(|a| a.get_long()).map(str::to_string).collect();
    let text = [DESCRIPTION, SIGNALS, EXIT_STATUS, ENVIRONMENT, ENVIRONMENT_OTHERS, EXAMPLES];
    let mentioned: Vec<String> = text.iter().flat_map(|t| mentioned_flags(t)).collect();
    assert!(mentioned.contains(&"grace-period".to_string()), "the scan found {mentioned:?}");
    for flag in mentioned {
        assert!(
            longs.contains(&flag) || others.contains(&flag.as_str()),
            "the man page's hand-written text names --{flag}, which lastcall does not have"
        );
    }
}

#[test]
fn flag_scan_reads_roff_escapes() {
    assert_eq!(mentioned_flags(r"\fB\-\-grace\-period\fR 20s"), ["grace-period"]);
    assert_eq!(mentioned_flags(r"a \-\-group, \-\-x\-y\-z. \-\- cmd"), ["group", "x-y-z"]);
    assert_eq!(mentioned_flags("no flags - here"), Vec::<String>::new());
}
