//! The command line: a bad option value, given as a flag or through its environment
//! variable, is exit status 2 and one stderr line naming the option and the value, and no
//! child is started.

use crate::support::TestDir;

/// Runs lastcall with `args` and `env` and a child that would leave `$DIR/ran`; expects a
/// usage error whose one line contains every word of `names` (any of the `|` alternatives).
#[track_caller]
fn check_usage_error(args: &[&str], env: &[(&str, &str)], names: &[&str]) {
    let dir = TestDir::new("usage_error");
    let mut cmd = dir.lastcall();
    // Should lastcall wrongly start, it must not take the default port from a parallel test.
    let about_listen = args.iter().any(|a| a.starts_with("--listen"))
        || env.iter().any(|(key, _)| *key == "LASTCALL_LISTEN");
    if !about_listen {
        cmd = cmd.args(["--listen", "off"]);
    }
    cmd = cmd.args(args);
    for (key, value) in env {
        cmd = cmd.env(key, value);
    }
    let out = cmd.sh("mark ran").run();
    out.assert_code(2);
    let line = out.one_stderr_line();
    out.check(line.starts_with("lastcall: "), "the line starts with `lastcall: `");
    for name in names {
        out.check(
            name.split('|').any(|alt| line.contains(alt)),
            format!("expected the line to name {name}"),
        );
    }
    out.check(!dir.exists("ran"), "the child must not have been started");
}

#[test]
fn bad_option_values_are_usage_errors() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--grace-period", "5x"], &["--grace-period", "5x"]),
        (&["--grace-period", "1000years"], &["--grace-period", "1000years"]),
        (&["--prestop-delay", "soon"], &["--prestop-delay", "soon"]),
        (&["--stop-signal", "FOO"], &["--stop-signal", "FOO"]),
        (&["--stop-signal", "99"], &["--stop-signal", "99"]),
        (&["--listen", "nope"], &["--listen", "nope"]),
        (&["--listen", "127.0.0.1:99999"], &["--listen", "127.0.0.1:99999"]),
        (&["--success-exit", "300"], &["--success-exit", "300"]),
        (&["--log-level", "loud"], &["--log-level", "loud"]),
        (&["--bogus"], &["--bogus"]),
        // Signals that cannot do the job: TERM would reload instead of draining, STOP stops.
        (
            &["--socket", "tcp://127.0.0.1:0", "--reload-signal", "TERM"],
            &["--reload-signal", "TERM"],
        ),
        (&["--socket", "tcp://127.0.0.1:0", "--reload-signal", "INT"], &["--reload-signal", "INT"]),
        (
            &["--socket", "tcp://127.0.0.1:0", "--reload-signal", "KILL"],
            &["--reload-signal", "KILL"],
        ),
        (
            &["--socket", "tcp://127.0.0.1:0", "--reload-signal", "STOP"],
            &["--reload-signal", "STOP"],
        ),
        (
            &["--socket", "tcp://127.0.0.1:0", "--reload-signal", "CHLD"],
            &["--reload-signal", "CHLD"],
        ),
        (
            &["--socket", "tcp://127.0.0.1:0", "--reload-signal", "TTIN"],
            &["--reload-signal", "TTIN"],
        ),
        (&["--stop-signal", "STOP"], &["--stop-signal", "STOP"]),
        (&["--stop-signal", "CHLD"], &["--stop-signal", "CHLD"]),
        (&["--stop-signal", "RTMIN++1"], &["--stop-signal", "RTMIN++1"]),
        (&["--stop-signal", "RTMIN+-1"], &["--stop-signal", "RTMIN+-1"]),
        (&["--restart", "sometimes"], &["--restart", "sometimes"]),
        (&["--restart-delay", "soon"], &["--restart-delay", "soon"]),
        (&["--restart-max-delay", "1000years"], &["--restart-max-delay", "1000years"]),
        (&["--restart-limit", "0"], &["--restart-limit", "0"]),
        (&["--restart-limit", "10001"], &["--restart-limit", "10001"]),
        (&["--restart-window", "0s"], &["--restart-window", "0s"]),
        (&["--restart-delay", "10s", "--restart-max-delay", "1s"], &["--restart-delay", "1s"]),
        (&["--restart", "on-failure", "--no-subreaper"], &["--restart", "--no-subreaper"]),
    ];
    for (args, names) in cases {
        check_usage_error(args, &[], names);
    }
}

#[test]
fn bad_values_in_the_environment_are_usage_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("LASTCALL_GRACE_PERIOD", "5x", "--grace-period"),
        ("LASTCALL_PRESTOP_DELAY", "soon", "--prestop-delay"),
        ("LASTCALL_STOP_SIGNAL", "FOO", "--stop-signal"),
        ("LASTCALL_LISTEN", "nope", "--listen"),
        ("LASTCALL_SUCCESS_EXIT", "3,300", "--success-exit"),
        ("LASTCALL_LOG_LEVEL", "loud", "--log-level"),
        ("LASTCALL_GROUP", "maybe", "--group"),
        ("LASTCALL_NO_SUBREAPER", "maybe", "--no-subreaper"),
        ("LASTCALL_RESTART", "sometimes", "--restart"),
        ("LASTCALL_RESTART_LIMIT", "x", "--restart-limit"),
        ("LASTCALL_RESTART_WINDOW", "0s", "--restart-window"),
    ];
    for (key, value, option) in cases {
        // The option's flag or the variable itself names it well enough.
        let alternatives = format!("{option}|{key}");
        let bad = if *key == "LASTCALL_SUCCESS_EXIT" { "300" } else { value };
        check_usage_error(&[], &[(key, value)], &[&alternatives, bad]);
    }
}

#[test]
fn no_command_is_a_usage_error() {
    let dir = TestDir::new("no_command");
    for args in [&["--listen", "off"][..], &["--listen", "off", "--"][..]] {
        let out = dir.lastcall().args(args).run();
        out.assert_code(2);
        let line = out.one_stderr_line();
        out.check(line.contains("no command"), "expected the line to say `no command`");
    }
}

#[test]
fn help_and_version_exit_zero() {
    let dir = TestDir::new("help_version");
    let help = dir.lastcall().arg("--help").run();
    help.assert_code(0);
    for flag in [
        "--listen",
        "--prestop-delay",
        "--grace-period",
        "--stop-signal",
        "--group",
        "--success-exit",
        "--no-subreaper",
        "--log-level",
    ] {
        help.check(help.stdout.contains(flag), format!("--help must list {flag}"));
    }
    let version = dir.lastcall().arg("--version").run();
    version.assert_code(0);
    version.check(version.stdout.starts_with("lastcall "), "--version prints `lastcall VERSION`");
}

/// A variable whose value is not UTF-8 is named in the one line.
#[test]
fn a_non_utf8_variable_is_named() {
    use std::os::unix::ffi::OsStrExt;
    let dir = TestDir::new("non_utf8_env");
    let out = dir
        .lastcall()
        .env_os("LASTCALL_GRACE_PERIOD", std::ffi::OsStr::from_bytes(b"5\xffs"))
        .args(["--listen", "off"])
        .sh("mark ran")
        .run();
    out.assert_code(2);
    let line = out.one_stderr_line();
    out.check(line.contains("LASTCALL_GRACE_PERIOD"), "expected the line to name the variable")
        .check(!dir.exists("ran"), "the child must not have been started");
}
