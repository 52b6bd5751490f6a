//! End to end: a rolling restart behind HAProxy drops no request (the scenario is
//! `support::lb::rolling`): lastcall around an app that finishes its requests on SIGTERM,
//! each of two backends restarted twice under load, and not one request fails.

use crate::support::lb::rolling::{self, Setup, Step};

#[test]
fn a_rolling_restart_behind_haproxy_drops_no_request() {
    let Some(rolled) = rolling::run(&Setup { other: None, abrupt: false }) else {
        return;
    };
    for &(_, name, step) in &rolled.events {
        if let Step::Exited(code) = step {
            assert_eq!(code, 0, "backend {name}: lastcall's exit status after SIGTERM");
        }
    }
    let requests = rolled.requests.len();
    assert!(requests > 100, "too few requests to prove anything: {requests}");
    assert!(rolled.failed().next().is_none(), "{}", rolled.summary);
}
