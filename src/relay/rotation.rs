//! Link rotation (`server.max_link_age`): a server that is a cluster behind
//! its own load balancer sees a link only when it is dialed, so links
//! dialed once stay on the same replicas forever. Rotation retires one link
//! at a time, gateway-wide: its agents move first (the rebalancer's planned
//! move), then the link task closes that connection cleanly and redials at
//! once, and the load balancer may pick another replica.
//!
//! A link retires only while every other link is connected and none is
//! retiring; agents left after [`DRAIN_LIMIT`] (their move failed, or their
//! assign policy keeps them there) take the ordinary failover path.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Relay;

/// Each upstream's `max_link_age` (in [`Links`](super::Links) order) and
/// the move rate it shares with the rebalancer.
#[derive(Debug, Clone)]
pub(crate) struct RotationSettings {
    pub max_link_age: Vec<Option<Duration>>,
    pub max_moves_per_second: u32,
}

const TICK: Duration = Duration::from_millis(250);
/// How long a retiring link waits for its agents to move away.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Each connection lives up to this fraction longer than `max_link_age`, so
/// links (and gateways) dialed together do not all retire together.
const JITTER: f64 = 0.1;

/// Which link to retire now, if any. `ages[i]`: how long link `i` has been
/// connected (`None`: down); `limits[i]`: its age limit, jitter included.
/// Nothing retires while a link is down or already retiring (there would be
/// no room to move its agents); otherwise the most overdue link does.
pub(crate) fn choose(ages: &[Option<Duration>], limits: &[Duration], retiring: bool) -> Option<u32> {
    if retiring || ages.len() < 2 || ages.iter().any(Option::is_none) {
        return None;
    }
    ages.iter()
        .zip(limits)
        .enumerate()
        .filter_map(|(i, (age, &limit))| Some((i as u32, age.and_then(|a| a.checked_sub(limit))?)))
        .max_by_key(|&(i, over)| (over, std::cmp::Reverse(i)))
        .map(|(i, _)| i)
}

/// The link being rotated out.
struct Retiring {
    link: u32,
    generation: u64,
    since: Instant,
}

/// The rotation task: returns at once when no upstream sets
/// `max_link_age`, else when `shutdown` is cancelled. One link retires at a
/// time, gateway-wide; its agents move within its upstream.
pub(crate) async fn run(relay: Arc<Relay>, settings: RotationSettings, shutdown: CancellationToken) {
    if settings.max_link_age.iter().all(Option::is_none) {
        return;
    }
    // Per connection (by generation): its age limit with jitter.
    let mut limits: Vec<(Option<u64>, Duration)> = vec![(None, Duration::ZERO); relay.links.len()];
    let budget = (f64::from(settings.max_moves_per_second) * TICK.as_secs_f64()).ceil() as usize;
    let mut retiring: Option<Retiring> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        retiring = match retiring {
            Some(r) => drain(&relay, r, budget),
            None => settings
                .max_link_age
                .iter()
                .enumerate()
                .find_map(|(upstream, max_age)| start(&relay, upstream, &mut limits, (*max_age)?)),
        };
    }
}

/// Picks a link of `upstream` to retire, if one is due.
fn start(
    relay: &Relay,
    upstream: usize,
    limits: &mut [(Option<u64>, Duration)],
    max_age: Duration,
) -> Option<Retiring> {
    let range = relay.links.upstreams().get(upstream)?.range();
    let mut ages = Vec::with_capacity(range.len());
    // The generation each age belongs to: a link lost after this read is not
    // the one to retire (`drain` sees the change and stops).
    let mut generations = Vec::with_capacity(range.len());
    for (link, limit) in relay.links.iter().zip(limits.iter_mut()).skip(range.start).take(range.len()) {
        let generation = link.state().generation;
        if limit.0 != Some(generation) {
            *limit = (Some(generation), max_age.mul_f64(1.0 + rand::random_range(0.0..=JITTER)));
        }
        ages.push(link.age());
        generations.push(generation);
    }
    let plain: Vec<Duration> = limits[range.clone()].iter().map(|l| l.1).collect();
    let chosen = choose(&ages, &plain, false)?;
    let (index, generation) = (range.start as u32 + chosen, generations[chosen as usize]);
    let link = relay.links.get(index)?;
    link.set_retiring(true);
    relay.movable.reconsider_on(index);
    tracing::debug!(upstream = %link.upstream_name(), link = %link.id(), age = ?link.age(), "upstream link retiring (max_link_age): moving its agents");
    Some(Retiring { link: index, generation, since: Instant::now() })
}

/// Moves agents off the retiring link; once it is empty (or after
/// [`DRAIN_LIMIT`]) asks its task to close and redial. Done when the
/// connection is gone.
fn drain(relay: &Relay, r: Retiring, budget: usize) -> Option<Retiring> {
    let link = relay.links.get(r.link)?;
    let state = link.state();
    if state.generation != r.generation || !state.connected {
        return None; // closed: rotated, or lost meanwhile
    }
    let load = relay.links.loads().get(r.link as usize).copied().unwrap_or(0);
    if load == 0 || r.since.elapsed() >= DRAIN_LIMIT {
        link.request_rotation(r.generation);
        return Some(r);
    }
    let others_down =
        relay.links.iter().any(|l| l.upstream == link.upstream && l.index != r.link && !l.state().connected);
    if others_down {
        // No room to move into: give up for now; failover comes first.
        link.set_retiring(false);
        tracing::debug!(link = %link.id(), "link rotation postponed: another link is down");
        return None;
    }
    let asked = relay.movable.in_flight(relay.links.len()).get(r.link as usize).copied().unwrap_or(0) as usize;
    relay.movable.ask(r.link, budget.saturating_sub(asked));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn nothing_is_due_before_its_limit() {
        assert_eq!(choose(&[Some(s(5)), Some(s(9))], &[s(10), s(10)], false), None);
        assert_eq!(choose(&[Some(s(5)), Some(s(10))], &[s(10), s(10)], false), Some(1), "due at its limit");
    }

    #[test]
    fn the_most_overdue_link_goes_first_and_jitter_counts() {
        let ages = [Some(s(12)), Some(s(12)), Some(s(12))];
        assert_eq!(choose(&ages, &[s(10), s(10), s(10)], false), Some(0), "ties: lowest index");
        assert_eq!(choose(&ages, &[s(11), s(9), s(10)], false), Some(1));
        assert_eq!(choose(&ages, &[s(13), s(13), s(11)], false), Some(2), "others' jitter not yet run out");
    }

    #[test]
    fn one_at_a_time_and_never_while_a_link_is_down() {
        let ages = [Some(s(20)), Some(s(20)), Some(s(20))];
        let limits = [s(10); 3];
        assert_eq!(choose(&ages, &limits, true), None, "another link is retiring");
        assert_eq!(choose(&[Some(s(20)), None, Some(s(20))], &limits, false), None, "a link is down");
        assert_eq!(choose(&[Some(s(20))], &[s(10)], false), None, "a single link has nowhere to move its agents");
        assert_eq!(choose(&[], &[], false), None);
    }
}
