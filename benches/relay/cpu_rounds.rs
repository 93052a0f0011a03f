//! CPU per relayed message, nginx and the gateway side by side, in
//! interleaved rounds.
//!
//! One paced run per proxy swings by ±15 % on this 2-core machine (the load
//! generator shares the cores, and the machine's own load drifts), more than
//! the difference being measured. Here every proxy keeps its own connected
//! fleet, and each round drives each fleet in turn (the order rotating per
//! round), so a drift touches all of them alike. A round's ratio compares
//! runs seconds apart; the bar is the median of those ratios.

use std::time::Duration;

use opamp_gateway::sim::agent::SimAgent;

use crate::gateway_proc;
use crate::load;

/// A proxy under test: its name in the report, its agent URL and its process.
pub(crate) struct Proxy {
    pub name: String,
    pub url: String,
    pub pid: u32,
}

/// Each proxy's CPU per relayed message, one entry per round.
pub(crate) struct Rounds {
    pub names: Vec<String>,
    /// `cpu[proxy][round]`, µs per message (user + system).
    pub cpu: Vec<Vec<f64>>,
    /// `user[proxy][round]`, µs per message.
    pub user: Vec<Vec<f64>>,
    pub window: Duration,
    pub errors: u64,
}

impl Rounds {
    /// Median of `proxy`'s rounds.
    pub(crate) fn median_cpu(&self, proxy: usize) -> f64 {
        median(self.cpu[proxy].clone())
    }

    pub(crate) fn median_user(&self, proxy: usize) -> f64 {
        median(self.user[proxy].clone())
    }

    /// Each round's `a / b`, and their median.
    pub(crate) fn ratios(&self, a: usize, b: usize) -> (Vec<f64>, f64) {
        let r: Vec<f64> = self.cpu[a].iter().zip(&self.cpu[b]).map(|(x, y)| x / y.max(f64::MIN_POSITIVE)).collect();
        (r.clone(), median(r))
    }

    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// The middle value (the upper one of an even count); NaN for none.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Connects `agents` agents to every proxy, then runs `rounds` rounds of one
/// `window`-long paced run (`rate` messages/s) per proxy.
pub(crate) async fn measure(proxies: &[Proxy], agents: usize, rate: f64, window: Duration, rounds: usize) -> Rounds {
    let mut fleets: Vec<Vec<SimAgent>> = Vec::new();
    let mut errors = 0;
    for p in proxies {
        let storm = load::storm(&p.url, agents, 256, &[]).await;
        errors += storm.errors as u64;
        // A first exchange each, so no round pays for a cold session.
        let warm = load::drive(storm.agents, Some(rate), Duration::from_secs(1)).await;
        fleets.push(warm.agents);
    }
    let (mut cpu, mut user) = (vec![Vec::new(); proxies.len()], vec![Vec::new(); proxies.len()]);
    for round in 0..rounds {
        for k in 0..proxies.len() {
            let i = (round + k) % proxies.len();
            let (user0, sys0) = gateway_proc::tree_cpu_split(proxies[i].pid);
            let run = load::drive(std::mem::take(&mut fleets[i]), Some(rate), window).await;
            let (user1, sys1) = gateway_proc::tree_cpu_split(proxies[i].pid);
            let msgs = (2 * run.round_trips).max(1) as f64;
            cpu[i].push((user1 - user0 + sys1 - sys0) * 1e6 / msgs);
            user[i].push((user1 - user0) * 1e6 / msgs);
            errors += run.errors;
            fleets[i] = run.agents;
        }
    }
    Rounds { names: proxies.iter().map(|p| p.name.clone()).collect(), cpu, user, window, errors }
}
