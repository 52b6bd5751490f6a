//! End to end: the request-aware drain's edge cases (`support::lb::edge`) lose no request
//! that a fixed preStop delay keeps. Kubernetes with no load balancer at several request
//! rates, on lastcall's defaults there; answers that pause for 4 s with no byte moving, for
//! an app that dies at once on SIGTERM, with `--prestop-delay 10s`; and a flood of one-time
//! probers of `/readyz` while HAProxy still routes to the app.

use std::time::Duration;

use crate::support::own_network;

use crate::support::lb::drain::{Drain, Figures};
use crate::support::lb::edge::{self, KUBE_DEFAULT, PROPAGATION};

/// The bound of the paused-answer and flood cases: `--prestop-delay 10s`.
const BOUND: Drain = Drain { delay: Duration::from_secs(10), aware: true };

#[test]
fn kube_at_20_a_second_no_request_fails_and_the_prestop_ends_after_propagation() {
    let Some(f) = check("kube-20", KUBE_DEFAULT, 1, 50) else {
        return;
    };
    let longest = f.drains.iter().max().copied().unwrap_or_default();
    let most = PROPAGATION + Duration::from_millis(1500);
    assert!(
        longest <= most,
        "the preStop phase took {longest:?}: more than the {PROPAGATION:?} of propagation and \
         1.5 s after the last request; a busy app should not wait out the whole delay\n{}",
        f.summary
    );
}

#[test]
fn kube_at_3_a_second_no_request_fails() {
    check("kube-3", KUBE_DEFAULT, 5, 57);
}

#[test]
fn kube_at_one_request_per_1_4_seconds_no_request_fails() {
    check("kube-0.71", KUBE_DEFAULT, 8, 7);
}

#[test]
fn kube_at_one_request_per_3_seconds_no_request_fails() {
    check("kube-0.33", KUBE_DEFAULT, 8, 8);
}

#[test]
fn paused_a_body_that_follows_its_head_4s_later_is_not_cut() {
    check("paused-body", BOUND, 1, 1);
}

#[test]
fn paused_a_4s_request_right_after_a_quick_one_on_a_keep_alive_connection_is_not_cut() {
    check("paused-keepalive", BOUND, 1, 2);
}

#[test]
fn paused_the_same_over_ipv6_is_not_cut() {
    check("paused-ipv6", BOUND, 1, 2);
}

#[test]
fn paused_the_same_arriving_during_the_drain_is_not_cut() {
    check("paused-in-drain", BOUND, 1, 2);
}

#[test]
fn paused_the_same_through_an_nginx_keepalive_pool_is_not_cut() {
    check("paused-nginx", BOUND, 1, 2);
}

#[test]
fn prober_flood_300_one_time_probers_do_not_end_the_drain_before_haproxy_lets_go() {
    check("prober-flood", BOUND, 1, 5);
}

/// Runs the case `name` with `drain`, `rounds` times, and asserts that at least `least`
/// requests counted and none failed. The figures; `None` when a needed tool is missing on a
/// developer's machine.
fn check(name: &str, drain: Drain, rounds: usize, least: usize) -> Option<Figures> {
    if !own_network() {
        return None;
    }
    let case = edge::case(name).expect("a case of support::lb::edge");
    let f = edge::run(case, drain, rounds)?;
    let summary = &f.summary;
    assert!(f.requests >= least, "too few requests to prove anything: {summary}");
    assert_eq!(f.drains.len(), rounds, "a preStop phase is missing: {summary}");
    assert!(f.failed.is_empty(), "{summary}");
    Some(f)
}
