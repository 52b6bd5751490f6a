//! What a request-aware drain watches: the app's connections, and the clients probing
//! `/readyz`.
//!
//! The preStop phase exists so that load balancers stop routing before the app stops. It can
//! end early once they have let go, which lastcall sees from both ends:
//! - the app's side: no connection is busy (a request in flight, an answer on its way, bytes
//!   moved within `--drain-quiet`) and no request bytes arrived on the app's ports for
//!   `--drain-quiet`. Idle keep-alive connections that a load balancer keeps pooled do not
//!   count. The drain wing reads the app and tells which connections are busy; the machine
//!   gets each read as an [`AppSummary`] and weighs only that;
//! - the probers' side: every client that was probing `/readyz` before the drain has been
//!   answered 503 `--drain-probes` times since, the count after which HAProxy (`fall 3`) and
//!   the kubelet (`failureThreshold: 3`) act on it.
//!
//! The kubelet is not waited for: a terminating pod leaves the Service's endpoints when it is
//! deleted, whatever its probes answer, and the kubelet probes every 10 s by default, so
//! waiting for it would always take the whole delay. Its probes say who they are
//! (`User-Agent: kube-probe/...`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use crate::drain::eyes::{AppSummary, ReadBy};
pub use crate::endpoint::http::Probe;
use crate::show;

/// A client counts as a prober of the drain when it asked `/readyz` at least twice, the last
/// time within this long before the drain: a load balancer's health checks, not a person's
/// one `curl`. A minute covers the usual intervals (HAProxy 2 s, nginx plus 5 s, cloud load
/// balancers 5–30 s).
pub const PROBER_WINDOW: Duration = Duration::from_secs(60);

/// The most clients remembered; past it, the one heard from longest ago is forgotten.
const MAX_PROBERS: usize = 256;

/// What is known of one client probing `/readyz`.
#[derive(Clone, Copy, Debug)]
struct Client {
    last: Instant,
    probes: u32,
    /// 503 answers since the drain began; `None` unless it is a prober of this drain.
    told: Option<u32>,
}

/// The clients probing `/readyz`, by address.
#[derive(Debug, Default)]
pub struct Probers {
    clients: HashMap<IpAddr, Client>,
}

impl Probers {
    pub fn on_probe(&mut self, probe: Probe, now: Instant) {
        if probe.kubelet {
            return;
        }
        if !self.clients.contains_key(&probe.from) && self.clients.len() >= MAX_PROBERS {
            let oldest = self.clients.iter().min_by_key(|(_, c)| c.last).map(|(a, _)| *a);
            if let Some(addr) = oldest {
                self.clients.remove(&addr);
            }
        }
        let client =
            self.clients.entry(probe.from).or_insert(Client { last: now, probes: 0, told: None });
        client.last = now;
        client.probes = client.probes.saturating_add(1);
        if let (false, Some(told)) = (probe.ready, client.told.as_mut()) {
            *told += 1;
        }
    }

    /// The drain begins at `now`: the clients probing until then are the ones to tell.
    pub fn start_drain(&mut self, now: Instant) {
        for client in self.clients.values_mut() {
            let recent = now.saturating_duration_since(client.last) <= PROBER_WINDOW;
            client.told = (recent && client.probes >= 2).then_some(0);
        }
    }

    /// The probers of this drain, and the fewest 503 answers any of them has had.
    pub fn told(&self) -> (usize, u32) {
        let told = self.clients.values().filter_map(|c| c.told);
        told.fold((0, u32::MAX), |(n, least), t| (n + 1, least.min(t)))
    }
}

/// A drain's watch on the app, from its start; it lives in [`super::Phase::Draining`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    /// How many ports of the app's are watched; `None` until they are found.
    pub ports: Option<usize>,
    /// What the last read that did not fail found.
    pub seen: Option<AppSummary>,
}

/// The rule's parameters, from the policy.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub quiet: Duration,
    pub probes: u32,
    pub min: Duration,
}

impl Watch {
    /// What the last read shows at `now`, in a drain begun at `started`; `None` before the
    /// first read.
    fn look(&self, probers: &Probers, started: Instant, now: Instant) -> Option<Look> {
        let seen = self.seen?;
        let (busy, idle) = (seen.busy, seen.idle);
        // Quiet since the last request seen, or since the drain began if none was; a count
        // from /proc cannot tell.
        let (quiet_for, request_seen) = match seen.by {
            ReadBy::Sockets => {
                let since = seen.last_request.unwrap_or(started);
                (Some(now.saturating_duration_since(since)), seen.last_request.is_some())
            }
            ReadBy::Counted => (None, false),
        };
        let (probing, told) = probers.told();
        let counted = seen.by == ReadBy::Counted;
        Some(Look { busy, idle, counted, quiet_for, request_seen, probing, told })
    }

    /// What holds the drain at `now`, the first of the rule's conditions not met; `None`
    /// when the load balancers have let go.
    fn hold(&self, probers: &Probers, rule: Rule, started: Instant, now: Instant) -> Option<Hold> {
        let Some(look) = self.look(probers, started, now) else {
            return Some(Hold::NoRead);
        };
        if look.busy > 0 {
            Some(Hold::Busy)
        } else if look.quiet_for.is_some_and(|q| q < rule.quiet) {
            Some(Hold::Quiet)
        } else if look.probing > 0 && look.told < rule.probes {
            Some(Hold::Probers)
        } else if now < started + rule.min {
            Some(Hold::Min)
        } else {
            None
        }
    }

    /// Whether the load balancers have let go at `now`, in a drain begun at `started`: the
    /// line that says why the drain ends, or `None` to keep waiting.
    pub fn idle(
        &self,
        probers: &Probers,
        rule: Rule,
        started: Instant,
        now: Instant,
    ) -> Option<String> {
        if self.hold(probers, rule, started, now).is_some() {
            return None;
        }
        let look = self.look(probers, started, now)?;
        let mut line = String::from("app idle: ");
        match look.quiet_for {
            Some(quiet) => {
                let _ = write!(line, "0 busy of {} connection{}, ", look.idle, plural(look.idle));
                if look.request_seen {
                    let _ = write!(line, "no request for {}", show::duration(quiet));
                } else {
                    line.push_str("no request seen");
                }
            }
            None => line.push_str("no connection open"),
        }
        if rule.probes == 0 {
            line.push_str(", probers not waited for");
        } else if look.probing == 0 {
            line.push_str(", no prober to tell");
        } else {
            let _ = write!(line, ", probers told {} time{}", look.told, plural(look.told as usize));
        }
        let _ = write!(
            line,
            ", after {} of drain",
            show::duration(now.saturating_duration_since(started))
        );
        Some(line)
    }

    /// Why the app was not found idle by `now`, when the preStop delay begun at `started` is
    /// over.
    pub fn not_idle(
        &self,
        probers: &Probers,
        rule: Rule,
        started: Instant,
        now: Instant,
    ) -> String {
        let hold = self.hold(probers, rule, started, now);
        let Some(look) = self.look(probers, started, now) else {
            return match self.ports {
                Some(0) => "with no port of the app's to watch".into(),
                _ => "without a read of the app's connections".into(),
            };
        };
        let (busy, idle) = (look.busy, look.idle);
        match hold {
            Some(Hold::Busy) => {
                let kind = if look.counted { "open" } else { "busy" };
                format!("with {busy} {kind} connection{}", plural(busy))
            }
            Some(Hold::Quiet) => {
                let quiet = show::duration(look.quiet_for.unwrap_or_default());
                let last = if look.request_seen {
                    format!("last request {quiet} ago")
                } else {
                    format!("no request seen in {quiet}")
                };
                format!("with 0 busy of {idle} connection{}, {last}", plural(idle))
            }
            Some(Hold::Probers) => format!(
                "with a prober told {} of {} time{}",
                look.told,
                rule.probes,
                plural(rule.probes as usize)
            ),
            Some(Hold::NoRead | Hold::Min) | None => "with the app idle".into(),
        }
    }
}

/// The last read, as the rule weighs it.
struct Look {
    busy: usize,
    idle: usize,
    /// Counted from /proc: every connection open is taken as busy.
    counted: bool,
    /// How long no request came; `None` when a count cannot tell.
    quiet_for: Option<Duration>,
    request_seen: bool,
    probing: usize,
    told: u32,
}

/// The first condition of the rule that is not met yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    NoRead,
    Busy,
    Quiet,
    Probers,
    Min,
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn probe(last_octet: u8, ready: bool) -> Probe {
        Probe { from: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last_octet)), ready, kubelet: false }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_prober_is_a_client_that_probed_twice_within_the_window() {
        let t0 = Instant::now();
        let mut p = Probers::default();
        p.on_probe(probe(1, true), t0); // once only: someone's curl
        p.on_probe(probe(2, true), t0); // a load balancer...
        p.on_probe(probe(2, true), t0 + secs(2));
        p.on_probe(probe(3, true), t0); // ... and one gone quiet long ago
        p.on_probe(probe(3, true), t0 + secs(1));
        p.on_probe(Probe { kubelet: true, ..probe(4, true) }, t0);
        p.on_probe(Probe { kubelet: true, ..probe(4, true) }, t0 + secs(10));
        p.start_drain(t0 + secs(62));
        assert_eq!(p.told(), (1, 0), "only 10.0.0.2 is waited for");
        p.on_probe(probe(2, false), t0 + secs(63));
        p.on_probe(probe(1, false), t0 + secs(63));
        p.on_probe(Probe { kubelet: true, ..probe(4, false) }, t0 + secs(63));
        assert_eq!(p.told(), (1, 1));
    }

    #[test]
    fn the_fewest_answers_count() {
        let t0 = Instant::now();
        let mut p = Probers::default();
        for addr in [1, 2] {
            p.on_probe(probe(addr, true), t0);
            p.on_probe(probe(addr, true), t0 + secs(1));
        }
        p.start_drain(t0 + secs(2));
        for _ in 0..3 {
            p.on_probe(probe(1, false), t0 + secs(3));
        }
        p.on_probe(probe(2, false), t0 + secs(3));
        assert_eq!(p.told(), (2, 1));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut p = Probers::default();
        for i in 0..(MAX_PROBERS as u32 + 100) {
            let from = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            p.on_probe(
                Probe { from, ready: true, kubelet: false },
                t0 + Duration::from_millis(i.into()),
            );
        }
        assert_eq!(p.clients.len(), MAX_PROBERS);
        let newest = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + MAX_PROBERS as u32 + 99));
        assert!(p.clients.contains_key(&newest), "the oldest made room");
    }
}
