//! When a request-aware drain may end: the rule over what the drain wing reads of the app
//! ([`AppSummary`]) and what the clients probing `/readyz` said.
//!
//! The preStop phase exists so that whoever routes requests to the app stops before the app
//! does. Its early end may never lose a request that waiting the whole delay would have
//! kept, so it ends only on evidence of two things; where lastcall cannot tell, it waits.
//!
//! **Nothing is in flight.** No connection is busy (TCP shows a request unanswered) and none
//! is unsure (the app wrote last and nothing moves: TCP cannot tell a complete answer from
//! one paused mid-stream). An unsure connection counts as in flight unless its peer is a
//! load balancer that said, in its own health check after letting go, that it has no
//! request in flight with the app and none queued (HAProxy's `http-check send-state`).
//!
//! **The routers have let go**, from what each kind of them shows:
//! - a load balancer that probes `/readyz` (a client that asked at least twice in the minute
//!   before the drain): it has had 503 `--drain-probes` times (the count after which HAProxy
//!   `fall 3` acts), or said itself that it took the app out (DOWN); then no request came
//!   for `--drain-quiet`;
//! - a router that cannot be heard (kube-proxy, and anything else that does not probe): the
//!   traffic itself has stopped. Requests that arrive at random at rate λ leave a silence of
//!   `s` with probability e^(-λs), so the silence must reach ln(1/[`FALSE_END`])/λ for a
//!   cautious λ: the rate seen during the drain, lowered by two standard errors of its
//!   estimate ([`MIN_GAPS`] gaps at least, else lastcall cannot tell). Traffic that comes in
//!   bursts leaves longer gaps than random traffic: the silence must also reach twice the
//!   longest gap seen. In Kubernetes it applies always (kube-proxy routes whether or not a
//!   load balancer probes), and never before [`PROPAGATION_FLOOR`]; elsewhere only when no
//!   load balancer probes.
//!
//! A read that fails leaves the state not known: the drain waits for the next good read.
//! The kubelet is not waited for: a terminating pod leaves the Service's endpoints when it is
//! deleted, whatever its probes answer, and the kubelet probes every 10 s by default. Its
//! probes say who they are (`User-Agent: kube-probe/...`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use crate::drain::eyes::{AppSummary, ReadBy, Rhythm};
pub use crate::endpoint::http::{LbWord, Probe};
use crate::show;

/// A client counts as a prober of the drain when it asked `/readyz` at least twice, the last
/// time within this long before the drain: a load balancer's health checks, not a person's
/// one `curl`. A minute covers the usual intervals (HAProxy 2 s, nginx plus 5 s, cloud load
/// balancers 5–30 s).
pub const PROBER_WINDOW: Duration = Duration::from_secs(60);

/// The most clients remembered. Past it, a new client takes the place of the one heard from
/// longest ago, but never of a prober of a drain under way (a new client cannot be one).
const MAX_PROBERS: usize = 256;

/// The chance the rule accepts that traffic still routed to the app left the silence it
/// ends on by chance: one drain in a thousand, for traffic that arrives at random.
pub const FALSE_END: f64 = 0.001;

/// The fewest gaps between arrivals a rate is estimated from; with fewer, the traffic's
/// rhythm is not known.
pub const MIN_GAPS: u32 = 5;

/// In Kubernetes, the earliest a drain ends: the time for the endpoint's removal to reach
/// every node. kube-proxy applies a change at most once a second by default
/// (`minSyncPeriod: 1s`), after the API server's watch has delivered it.
pub const PROPAGATION_FLOOR: Duration = Duration::from_secs(2);

/// What is known of one client probing `/readyz`.
#[derive(Clone, Copy, Debug)]
struct Client {
    last: Instant,
    probes: u32,
    /// 503 answers since the drain began; `None` unless it is a prober of this drain.
    told: Option<u32>,
    /// What it said of itself during this drain.
    words: Words,
}

/// The last word a load balancer said of each of its servers that is the app, up to
/// [`WORDS`]; `more` when it spoke of more.
#[derive(Clone, Copy, Debug, Default)]
struct Words {
    each: [Option<LbWord>; WORDS],
    more: bool,
}

/// The most servers of one load balancer's remembered.
const WORDS: usize = 4;

impl Words {
    fn add(&mut self, word: LbWord) {
        let same = self.each.iter_mut().flatten().find(|w| w.server == word.server);
        match same {
            Some(w) => *w = word,
            None => match self.each.iter_mut().find(|w| w.is_none()) {
                Some(free) => *free = Some(word),
                None => self.more = true,
            },
        }
    }

    /// Whether it spoke, of all its servers, and each word passes `test`.
    fn all(&self, test: impl Fn(&LbWord) -> bool) -> bool {
        let mut words = self.each.iter().flatten().peekable();
        !self.more && words.peek().is_some() && words.all(test)
    }
}

impl Client {
    /// It has let go: told enough times, or it said it took the app out.
    fn let_go(&self, probes: u32) -> bool {
        self.told.is_some_and(|t| t >= probes) || self.words.all(|w| w.down)
    }

    /// It said, after letting go, that it has nothing in flight with the app.
    fn done(&self) -> bool {
        self.words.all(|w| w.down && w.sessions == 0 && w.queued == 0)
    }
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
            let oldest = self.clients.iter().filter(|(_, c)| c.told.is_none());
            match oldest.min_by_key(|(_, c)| c.last).map(|(a, _)| *a) {
                Some(addr) => self.clients.remove(&addr),
                None => return,
            };
        }
        let new = Client { last: now, probes: 0, told: None, words: Words::default() };
        let client = self.clients.entry(probe.from).or_insert(new);
        client.last = now;
        client.probes = client.probes.saturating_add(1);
        if let (Some(_), Some(word)) = (client.told, probe.lb) {
            client.words.add(word);
        }
        if let (false, Some(told)) = (probe.ready, client.told.as_mut()) {
            *told += 1;
        }
    }

    /// The drain begins at `now`: the clients probing until then are the ones to tell.
    pub fn start_drain(&mut self, now: Instant) {
        for client in self.clients.values_mut() {
            let recent = now.saturating_duration_since(client.last) <= PROBER_WINDOW;
            client.told = (recent && client.probes >= 2).then_some(0);
            client.words = Words::default();
        }
    }

    fn of_drain(&self) -> impl Iterator<Item = &Client> {
        self.clients.values().filter(|c| c.told.is_some())
    }

    /// The probers of this drain, and the fewest 503 answers any of them has had.
    pub fn told(&self) -> (usize, u32) {
        let told = self.of_drain().filter_map(|c| c.told);
        told.fold((0, u32::MAX), |(n, least), t| (n + 1, least.min(t)))
    }

    /// Every prober of this drain has let go.
    fn all_let_go(&self, probes: u32) -> bool {
        self.of_drain().all(|c| c.let_go(probes))
    }

    /// `addr` is a prober of this drain that said it has nothing in flight with the app.
    fn done(&self, addr: IpAddr) -> bool {
        self.clients.get(&addr).is_some_and(|c| c.told.is_some() && c.done())
    }

    /// Every prober of this drain said so.
    fn all_done(&self) -> bool {
        let mut probers = self.of_drain().peekable();
        probers.peek().is_some() && probers.all(Client::done)
    }
}

/// A drain's watch on the app, from its start; it lives in [`super::Phase::Draining`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    /// How many ports of the app's are watched; `None` until they are found.
    pub ports: Option<usize>,
    /// The last read, if it did not fail.
    pub seen: Option<AppSummary>,
    /// Some read failed, and none has succeeded since.
    pub failed: bool,
}

/// The rule's parameters, from the policy.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub quiet: Duration,
    pub probes: u32,
    pub min: Duration,
    pub in_kubernetes: bool,
}

/// What ended a drain early, for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evidence {
    /// How long no request came, and how long that had to be.
    pub silence: Duration,
    pub needed: Duration,
    /// Requests a second seen during the drain, where the rhythm of the traffic counted.
    pub rate: Option<f64>,
    /// The probers of the drain, and the fewest 503 answers one had.
    pub probers: usize,
    pub told: u32,
}

/// The first condition of the rule that is not met yet.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Hold {
    /// No good read since the drain began, or the last one failed.
    NoRead,
    Busy,
    Unsure,
    Probers,
    /// Too few arrivals to know the traffic's rhythm.
    Unknown,
    /// Not silent long enough: for `--drain-quiet`, or for the traffic's rhythm.
    Silence {
        needed: Duration,
        rate: Option<f64>,
    },
    Floor,
    Min,
}

/// The silence that rules out, at [`FALSE_END`], traffic with `rhythm` still arriving;
/// `None` when too little of it was seen to tell. Also the cautious rate it assumed.
fn silence_for(rhythm: &Rhythm) -> Option<(Duration, f64)> {
    let gaps = rhythm.arrivals.checked_sub(1).filter(|g| *g >= MIN_GAPS)?;
    let span = rhythm.last?.checked_duration_since(rhythm.first?)?.as_secs_f64();
    if span <= 0.0 {
        return None;
    }
    let gaps = f64::from(gaps);
    let cautious = gaps / span * (1.0 - 2.0 / gaps.sqrt());
    if cautious <= 0.0 {
        return None;
    }
    let by_rate = Duration::try_from_secs_f64((1.0 / FALSE_END).ln() / cautious).ok()?;
    Some((by_rate.max(rhythm.longest_gap.saturating_mul(2)), cautious))
}

impl Watch {
    /// The read the rule weighs: none before the first good one or after a failed one.
    fn known(&self) -> Option<&AppSummary> {
        self.seen.as_ref().filter(|_| !self.failed)
    }

    /// What holds the drain at `now`, the first of the rule's conditions not met; `None`
    /// when it may end.
    fn hold(&self, probers: &Probers, rule: Rule, started: Instant, now: Instant) -> Option<Hold> {
        self.weigh(probers, rule, started, now).err()
    }

    /// The rule at `now`, in a drain begun at `started`: the evidence that it may end, or
    /// the first of its conditions not met.
    fn weigh(
        &self,
        probers: &Probers,
        rule: Rule,
        started: Instant,
        now: Instant,
    ) -> Result<Evidence, Hold> {
        let Some(seen) = self.known() else {
            return Err(Hold::NoRead);
        };
        if seen.busy > 0 {
            return Err(Hold::Busy);
        }
        if seen.unsure > 0 && !seen.unsure_from.all(|a| probers.done(a)) {
            return Err(Hold::Unsure);
        }
        let (probing, told) = probers.told();
        let heard = probing > 0 && rule.probes > 0;
        if heard && !probers.all_let_go(rule.probes) {
            return Err(Hold::Probers);
        }
        let mut needed = rule.quiet;
        let mut rate = None;
        if rule.in_kubernetes || !heard {
            // A router that cannot be heard: only the traffic's rhythm shows it let go.
            let Some((by_rhythm, cautious)) = silence_for(&seen.rhythm) else {
                return Err(Hold::Unknown);
            };
            needed = needed.max(by_rhythm);
            rate = Some(cautious);
        }
        let silence = now.saturating_duration_since(seen.last_activity.unwrap_or(started));
        // A count from /proc dates nothing: its silence proves nothing either way.
        if seen.by == ReadBy::Sockets && silence < needed {
            return Err(Hold::Silence { needed, rate });
        }
        let elapsed = now.saturating_duration_since(started);
        if rule.in_kubernetes && elapsed < PROPAGATION_FLOOR {
            Err(Hold::Floor)
        } else if elapsed < rule.min {
            Err(Hold::Min)
        } else {
            Ok(Evidence { silence, needed, rate, probers: probing, told })
        }
    }

    /// Whether the drain begun at `started` may end at `now`: the line that says on what
    /// evidence, and the evidence; `None` to keep waiting.
    pub fn ended(
        &self,
        probers: &Probers,
        rule: Rule,
        started: Instant,
        now: Instant,
    ) -> Option<(String, Evidence)> {
        let evidence = self.weigh(probers, rule, started, now).ok()?;
        let seen = self.known()?;
        let Evidence { silence, needed, rate, told, .. } = evidence;
        let heard = evidence.probers > 0 && rule.probes > 0;
        let mut parts = vec![];
        if heard {
            let mut part = format!("probers told {told} time{}", plural(told as usize));
            if probers.all_done() {
                part.push_str(", and said they have no request in flight");
            }
            parts.push(part);
        }
        match (seen.by, rate) {
            (ReadBy::Counted, _) => parts.push("no connection open".into()),
            (ReadBy::Sockets, Some(rate)) => parts.push(format!(
                "no request for {} ({} needed after {} arrivals at {rate:.1}/s or more)",
                show::duration(silence),
                show::duration(needed),
                seen.rhythm.arrivals
            )),
            (ReadBy::Sockets, None) => parts.push(match seen.last_activity {
                Some(_) => format!("no request for {}", show::duration(silence)),
                None => "no request seen".into(),
            }),
        }
        if seen.by == ReadBy::Sockets {
            let open = seen.busy + seen.unsure + seen.idle;
            let mut part = format!("0 busy of {open} connection{}", plural(open));
            if seen.unsure > 0 {
                let _ =
                    write!(part, " ({} the app wrote last on, cleared by the prober)", seen.unsure);
            }
            parts.push(part);
        }
        let lead = match (heard, rate.is_some()) {
            (true, true) => "load balancers let go and traffic stopped",
            (true, false) => "load balancers let go",
            (false, _) => "traffic stopped",
        };
        let elapsed = show::duration(now.saturating_duration_since(started));
        let line = format!("{lead}: {}, after {elapsed} of drain", parts.join(", "));
        Some((line, evidence))
    }

    /// Why the drain begun at `started` did not end early, when its delay is over at `now`.
    pub fn not_ended(
        &self,
        probers: &Probers,
        rule: Rule,
        started: Instant,
        now: Instant,
    ) -> String {
        let hold = self.hold(probers, rule, started, now);
        let Some(seen) = self.known() else {
            return match (self.ports, self.failed) {
                (Some(0), _) => "with no port of the app's to watch".into(),
                (_, true) => "with the last read of the app's connections failed".into(),
                _ => "without a read of the app's connections".into(),
            };
        };
        let (busy, unsure) = (seen.busy, seen.unsure);
        let open = busy + unsure + seen.idle;
        let silence = now.saturating_duration_since(seen.last_activity.unwrap_or(started));
        let last = match seen.last_activity {
            Some(_) => format!("last request {} ago", show::duration(silence)),
            None => format!("no request seen in {}", show::duration(silence)),
        };
        match hold {
            Some(Hold::Busy) => {
                let kind = if seen.by == ReadBy::Counted { "open" } else { "busy" };
                format!("with {busy} {kind} connection{}", plural(busy))
            }
            Some(Hold::Unsure) => format!(
                "with {unsure} connection{} the app wrote last on (an answer paused mid-stream \
                 looks the same as a finished one)",
                plural(unsure)
            ),
            Some(Hold::Probers) => {
                let (_, told) = probers.told();
                format!(
                    "with a prober told {told} of {} time{}",
                    rule.probes,
                    plural(rule.probes as usize)
                )
            }
            Some(Hold::Unknown) => {
                let n = seen.rhythm.arrivals;
                format!(
                    "with too little traffic seen to tell that it stopped ({n} arrival{} in the \
                     drain, {last})",
                    plural(n as usize)
                )
            }
            Some(Hold::Silence { needed, rate: Some(rate) }) => format!(
                "with traffic still possible: {} arrivals at {rate:.1}/s or more, {last}, {} \
                 needed",
                seen.rhythm.arrivals,
                show::duration(needed)
            ),
            Some(Hold::Silence { rate: None, .. }) => {
                format!("with 0 busy of {open} connection{}, {last}", plural(open))
            }
            Some(Hold::Floor) => format!(
                "within the floor of {} for the Service's propagation",
                show::duration(PROPAGATION_FLOOR)
            ),
            Some(Hold::NoRead | Hold::Min) | None => "with the app idle".into(),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn probe(last_octet: u8, ready: bool) -> Probe {
        let from = IpAddr::V4(Ipv4Addr::new(10, 0, 0, last_octet));
        Probe { from, ready, kubelet: false, lb: None }
    }

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
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
        assert!(!p.all_let_go(3));
        // A load balancer's own word that it took the app out is enough.
        let down = LbWord { down: true, sessions: 2, queued: 0, server: 0 };
        p.on_probe(Probe { lb: Some(down), ..probe(2, false) }, t0 + secs(3));
        assert!(p.all_let_go(3));
        assert!(!p.all_done(), "10.0.0.2 has requests in flight, 10.0.0.1 said nothing");
    }

    fn client(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn memory_is_bounded_and_a_drains_probers_are_never_forgotten() {
        let t0 = Instant::now();
        let mut p = Probers::default();
        let at = |i: u32| t0 + ms(i.into());
        for i in 0..(MAX_PROBERS as u32 + 100) {
            p.on_probe(Probe { from: client(i), ..probe(0, true) }, at(i));
        }
        assert_eq!(p.clients.len(), MAX_PROBERS);
        assert!(p.clients.contains_key(&client(MAX_PROBERS as u32 + 99)), "the oldest made room");
        // The 200 newest probe twice: they are the probers of the drain.
        let first = MAX_PROBERS as u32 + 100 - 200;
        for i in first..first + 200 {
            p.on_probe(Probe { from: client(i), ..probe(0, true) }, at(1000 + i));
        }
        p.start_drain(at(2000));
        assert_eq!(p.told(), (200, 0));
        // 300 new addresses probe once each during the drain: they take the other places
        // in turn, never a prober's.
        for i in 10_000..10_300 {
            p.on_probe(Probe { from: client(i), ..probe(0, false) }, at(3000 + i));
        }
        assert_eq!(p.clients.len(), MAX_PROBERS);
        assert_eq!(p.told(), (200, 0), "every prober of the drain is still waited for");
        // With the table full of them, a new client is not remembered.
        let mut full = Probers::default();
        for i in 0..MAX_PROBERS as u32 {
            full.on_probe(Probe { from: client(i), ..probe(0, true) }, t0);
            full.on_probe(Probe { from: client(i), ..probe(0, true) }, t0);
        }
        full.start_drain(t0);
        full.on_probe(Probe { from: client(99_999), ..probe(0, false) }, t0);
        assert_eq!(full.told(), (MAX_PROBERS, 0));
        assert!(!full.clients.contains_key(&client(99_999)));
    }

    const RULE: Rule = Rule { quiet: secs(1), probes: 3, min: secs(1), in_kubernetes: false };
    const KUBE: Rule = Rule { in_kubernetes: true, ..RULE };

    /// What the drain wing would report at `now` of the arrivals (seconds after the drain
    /// began at `t0`) it has seen, each dated at the first read (every 100 ms) after it: a
    /// connection accepted between two reads is seen at the second.
    fn summary_of(arrivals: &[f64], t0: Instant, now: Instant) -> AppSummary {
        let mut rhythm = Rhythm::default();
        for a in arrivals {
            let read = ((a * 10.0).floor() as u64 + 1) * 100;
            let at = t0 + ms(read);
            if at > now {
                break;
            }
            if let Some(last) = rhythm.last {
                rhythm.longest_gap = rhythm.longest_gap.max(at - last);
            }
            rhythm.first = rhythm.first.or(Some(at));
            rhythm.last = Some(at);
            rhythm.arrivals += 1;
        }
        AppSummary {
            busy: 0,
            unsure: 0,
            idle: 0,
            unsure_from: Default::default(),
            last_activity: rhythm.last,
            rhythm,
            by: ReadBy::Sockets,
        }
    }

    /// When a drain with `rule`, reading every 100 ms, ends for `arrivals`; `None` if not
    /// before `bound`.
    fn ends(arrivals: &[f64], rule: Rule, bound: Duration) -> Option<Duration> {
        let (t0, p) = (Instant::now(), Probers::default());
        (1..).map(|i| ms(i * 100)).take_while(|t| *t < bound).find(|t| {
            let seen = Some(summary_of(arrivals, t0, t0 + *t));
            let watch = Watch { ports: Some(1), seen, failed: false };
            watch.ended(&p, rule, t0, t0 + *t).is_some()
        })
    }

    /// Arrivals at random at `rate` a second from `from` to `until` seconds (a seeded
    /// xorshift, so that every run sees the same).
    fn poisson(rate: f64, from: f64, until: f64, seed: u64) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut t, mut out) = (from, vec![]);
        loop {
            t += -(1.0 - next()).ln() / rate;
            if t >= until {
                return out;
            }
            out.push(t);
        }
    }

    /// kube-proxy goes on routing to the app for 3 s after the drain begins.
    const PROPAGATION: f64 = 3.0;

    #[test]
    fn in_kubernetes_no_request_routed_before_propagation_is_lost() {
        // Rates of the measurement: one every 3 s and every 1.4 s, 3 and 20 a second.
        for rate in [1.0 / 3.0, 1.0 / 1.4, 3.0, 20.0] {
            for seed in 1..=200 {
                // And the minute before: seen or not, it must not matter.
                let arrivals = poisson(rate, 0.0, PROPAGATION, seed);
                let Some(end) = ends(&arrivals, KUBE, secs(5)) else { continue };
                let last = arrivals.last().copied().unwrap_or(0.0);
                assert!(
                    end.as_secs_f64() > last,
                    "at {rate}/s (seed {seed}) the drain ended at {end:?}, before a request at \
                     {last:.2}s"
                );
                assert!(end >= PROPAGATION_FLOOR);
            }
        }
    }

    #[test]
    fn steady_traffic_ends_the_drain_soon_after_it_stops() {
        for seed in 1..=50 {
            let arrivals = poisson(20.0, 0.0, PROPAGATION, seed);
            let end = ends(&arrivals, KUBE, secs(10)).expect("ends early");
            assert!(end <= ms(4_500), "20/s (seed {seed}): ended at {end:?}");
        }
        let arrivals = poisson(100.0, 0.0, PROPAGATION, 7);
        assert!(ends(&arrivals, KUBE, secs(10)).unwrap() <= ms(4_200));
    }

    #[test]
    fn sparse_or_no_traffic_waits_for_the_bound() {
        assert_eq!(ends(&[], KUBE, secs(30)), None, "nothing seen: cannot tell");
        assert_eq!(ends(&[], RULE, secs(30)), None, "nor outside Kubernetes without a prober");
        assert_eq!(ends(&[0.5, 2.0, 3.5, 5.0], KUBE, secs(30)), None, "three gaps");
        // One a second for 10 s: a cautious rate of 0.4/s needs 17 s of silence.
        let arrivals: Vec<f64> = (0..10).map(|i| f64::from(i) + 0.05).collect();
        let end = ends(&arrivals, KUBE, secs(60)).unwrap();
        assert!(end > secs(9 + 14), "ended at {end:?}");
    }

    #[test]
    fn bursty_traffic_needs_twice_its_longest_gap() {
        // Ten requests in 100 ms, every 2 s: the rate says 4.3/s, the gaps say 4 s.
        let arrivals: Vec<f64> = (0..4)
            .flat_map(|burst| (0..10).map(move |i| f64::from(burst) * 2.0 + f64::from(i) * 0.01))
            .collect();
        let end = ends(&arrivals, KUBE, secs(30)).unwrap();
        assert!(end >= ms(6_100 + 4_000), "ended at {end:?}");
    }

    #[test]
    fn in_kubernetes_the_drain_never_ends_before_the_floor() {
        // A burst that stops at once: the rhythm alone would end it a second later, at 1.5 s.
        let arrivals: Vec<f64> = (0..100).map(|i| f64::from(i) * 0.005).collect();
        let elsewhere = Rule { in_kubernetes: false, probes: 0, ..RULE };
        assert_eq!(ends(&arrivals, elsewhere, secs(9)), Some(ms(1_500)));
        assert_eq!(ends(&arrivals, KUBE, secs(9)), Some(PROPAGATION_FLOOR));
    }

    /// A drain begun at `t0` with one prober, 10.0.0.1, told three times since, whose last
    /// probe carried `word`; the app's last read at `now` shows `unsure` connections from
    /// `peer`, no request for 2 s.
    fn with_unsure(word: Option<LbWord>, peer: &str, unsure: usize) -> bool {
        let t0 = Instant::now();
        let mut p = Probers::default();
        p.on_probe(probe(1, true), t0);
        p.on_probe(probe(1, true), t0);
        p.start_drain(t0);
        for _ in 0..3 {
            p.on_probe(probe(1, false), t0 + secs(1));
        }
        p.on_probe(Probe { lb: word, ..probe(1, false) }, t0 + secs(1));
        let mut s = summary_of(&[], t0, t0);
        s.unsure_from.add(peer.parse().unwrap());
        (s.unsure, s.idle, s.last_activity) = (unsure, 1, Some(t0));
        let watch = Watch { ports: Some(1), seen: Some(s), failed: false };
        watch.ended(&p, RULE, t0, t0 + secs(2)).is_some()
    }

    #[test]
    fn a_connection_the_app_wrote_last_on_holds_unless_its_load_balancer_has_nothing_in_flight() {
        let down = |sessions, queued| Some(LbWord { down: true, sessions, queued, server: 0 });
        assert!(with_unsure(None, "10.0.0.1", 0), "nothing unsure: the probers' rule");
        assert!(!with_unsure(None, "10.0.0.1", 2), "a paused answer looks the same");
        assert!(with_unsure(down(0, 0), "10.0.0.1", 2), "HAProxy: DOWN, scur=0, qcur=0");
        assert!(!with_unsure(down(1, 0), "10.0.0.1", 2), "one request in flight");
        assert!(!with_unsure(down(0, 1), "10.0.0.1", 2), "one queued");
        assert!(!with_unsure(
            Some(LbWord { down: false, sessions: 0, queued: 0, server: 0 }),
            "10.0.0.1",
            2
        ));
        assert!(!with_unsure(down(0, 0), "10.0.0.7", 2), "not the prober's connection");
    }

    #[test]
    fn a_failed_read_is_not_known_not_the_last_known_state() {
        let t0 = Instant::now();
        let seen = Some(summary_of(&[], t0, t0));
        let p = Probers::default();
        let rule = Rule { probes: 0, ..RULE };
        let good = Watch { ports: Some(1), seen, failed: false };
        let failed = Watch { failed: true, ..good };
        // Not even the rhythm could end this one; the failure is what the line says.
        assert_eq!(
            failed.not_ended(&p, rule, t0, t0 + secs(5)),
            "with the last read of the app's connections failed"
        );
        assert_eq!(failed.hold(&p, rule, t0, t0 + secs(5)), Some(Hold::NoRead));
        assert_ne!(good.hold(&p, rule, t0, t0 + secs(5)), Some(Hold::NoRead));
    }

    #[test]
    fn a_load_balancer_that_checks_the_app_as_two_servers_is_done_when_both_are() {
        let t0 = Instant::now();
        let mut p = Probers::default();
        p.on_probe(probe(1, true), t0);
        p.on_probe(probe(1, true), t0);
        p.start_drain(t0);
        let word = |server, sessions| LbWord { down: true, sessions, queued: 0, server };
        p.on_probe(Probe { lb: Some(word(1, 0)), ..probe(1, false) }, t0);
        p.on_probe(Probe { lb: Some(word(2, 3)), ..probe(1, false) }, t0);
        p.on_probe(Probe { lb: Some(word(1, 0)), ..probe(1, false) }, t0);
        assert!(!p.done(probe(1, false).from), "server 2 has three requests in flight");
        p.on_probe(Probe { lb: Some(word(2, 0)), ..probe(1, false) }, t0);
        assert!(p.done(probe(1, false).from));
        for server in 3..=5 {
            p.on_probe(Probe { lb: Some(word(server, 0)), ..probe(1, false) }, t0);
        }
        assert!(!p.done(probe(1, false).from), "a fifth server is not remembered");
    }
}
