//! End to end: the request-aware drain behind real load balancers drops no request, and ends
//! as soon as the load balancer has let go. The scenarios are `support::lb::drain`'s; each
//! runs with the request-aware drain (the default) and an upper bound of 10 s, each backend
//! stopped once.

use std::time::Duration;

use crate::support::own_network;

use crate::support::lb::drain::{self, Drain, Figures, SCENARIOS, Scenario};

/// The request-aware drain's upper bound in the tests: generous.
const BOUND: Duration = Duration::from_secs(10);

#[test]
fn behind_haproxy_with_http_reuse_the_drain_ends_when_haproxy_lets_go() {
    // HAProxy lets go after three checks 200 ms apart: the drain ends far below its bound.
    if let Some(f) = check(&SCENARIOS[0]) {
        let longest = f.drains.iter().max().copied().unwrap_or_default();
        assert!(longest < BOUND / 2, "a preStop phase took {longest:?}; bound {BOUND:?}");
    }
}

#[test]
fn behind_nginx_with_a_keepalive_pool_no_request_fails() {
    check(&SCENARIOS[1]);
}

#[test]
fn a_legacy_app_that_dies_on_sigterm_loses_no_request_in_flight() {
    check(&SCENARIOS[2]);
}

#[test]
fn at_low_traffic_the_drain_waits_for_haproxys_usual_checks() {
    check(&SCENARIOS[3]);
}

#[test]
fn a_streaming_response_holds_the_drain_until_it_ends() {
    check(&SCENARIOS[4]);
}

/// Runs `scenario` with the request-aware drain, each backend stopped once, and asserts no
/// failure. The figures; `None` when a needed tool is missing on a developer's machine.
fn check(scenario: &Scenario) -> Option<Figures> {
    if !own_network() {
        return None;
    }
    let f = drain::run(scenario, Drain { delay: BOUND, aware: true }, 1)?;
    let summary = &f.summary;
    assert!(f.requests >= 5, "too few requests to prove anything: {summary}");
    assert_eq!(f.drains.len(), 2, "a preStop phase is missing: {summary}");
    assert!(f.failed.is_empty(), "{summary}");
    Some(f)
}
