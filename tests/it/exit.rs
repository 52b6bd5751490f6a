//! lastcall's exit status: the child's, 128+N for death by signal N, `--success-exit`
//! mapping, and 127/126 when the program cannot be run.

use std::os::unix::fs::PermissionsExt;

use crate::support::TestDir;

#[test]
fn exit_status_is_the_childs_and_a_normal_run_is_silent() {
    let dir = TestDir::new("exit_status");
    for code in [0, 3, 255] {
        // With the endpoint on: serving it must not make a normal run talk either.
        dir.lastcall()
            .args(["--listen", "127.0.0.1:0"])
            .sh(&format!("exit {code}"))
            .run()
            .assert_code(code)
            .assert_stderr_empty();
    }
}

#[test]
fn death_by_signal_is_128_plus_its_number() {
    let dir = TestDir::new("death_by_signal");
    dir.lastcall()
        .args(["--listen", "off"])
        .sh("kill -USR1 $$")
        .run()
        .assert_code(128 + libc::SIGUSR1);
}

#[test]
fn success_exit_turns_listed_codes_into_zero() {
    let dir = TestDir::new("success_exit");
    let run = |args: &[&str], script: &str| {
        dir.lastcall().args(["--listen", "off"]).args(args).sh(script).run()
    };
    run(&["--success-exit", "143"], "kill -TERM $$").assert_code(0);
    // Only the listed codes.
    run(&["--success-exit", "143"], "exit 3").assert_code(3);
    // Repeatable.
    run(&["--success-exit", "1", "--success-exit", "2"], "exit 2").assert_code(0);
}

#[test]
fn success_exit_from_the_environment_is_a_comma_list() {
    let dir = TestDir::new("success_exit_env");
    let run = |script: &str| {
        dir.lastcall()
            .env("LASTCALL_SUCCESS_EXIT", "3,4")
            .args(["--listen", "off"])
            .sh(script)
            .run()
    };
    run("exit 4").assert_code(0);
    run("exit 3").assert_code(0);
    run("exit 5").assert_code(5);
}

#[test]
fn a_missing_program_is_127_with_one_line_naming_it() {
    let dir = TestDir::new("missing_program");
    for program in ["no-such-program-for-lastcall", "/nonexistent/dir/program"] {
        let out = dir.lastcall().args(["--listen", "off", "--", program, "arg"]).run();
        out.assert_code(127);
        let line = out.one_stderr_line();
        out.check(
            line.starts_with("lastcall: cannot run ") && line.contains(&format!("'{program}'")),
            "expected `lastcall: cannot run 'PROGRAM': ...`",
        );
    }
}

#[test]
fn a_program_that_cannot_be_executed_is_126() {
    let dir = TestDir::new("not_executable");
    let file = dir.join("not-executable");
    dir.write("not-executable", "#!/bin/sh\necho ran > \"$DIR/ran\"\n");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A plain file without the x bit, and a directory.
    for program in [file.to_str().unwrap(), dir.path().to_str().unwrap()] {
        let out = dir.lastcall().args(["--listen", "off", "--", program]).run();
        out.assert_code(126);
        let line = out.one_stderr_line();
        out.check(
            line.starts_with("lastcall: cannot run ") && line.contains(&format!("'{program}'")),
            "expected `lastcall: cannot run 'PROGRAM': ...`",
        );
        out.check(!dir.exists("ran"), "the file must not have run");
    }
}
