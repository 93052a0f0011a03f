//! A failing policy must not take the relay down (issue 17), through a real
//! gateway on loopback with the real `misbehave` component:
//! - a looping filter is quarantined by its circuit breaker: new agents
//!   connect and messages flow without a Wasm call, one warning is logged;
//!   a half-open trial lifts the quarantine, and so does a replacement;
//! - a guest printing on every call breaks nothing, and its output is
//!   rate-limited into the log;
//! - a `forward-headers` answer over the cap is invalid;
//! - a vanished policy directory unloads nothing; `/readyz` says so.
//!
//! The tests share one log capture and one metrics recorder (both are
//! process-wide), so each uses its own policy names.

#[path = "support/observe.rs"]
mod observe;
#[path = "policy_support/mod.rs"]
mod policy_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use opamp_gateway::config::Config;
use opamp_gateway::policy::runtime::ReloadOutcome;
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::agent::{AgentError, AgentOptions, SimAgent};
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use policy_support::{applied, install, mode_agent, wait_for};

const T: Duration = Duration::from_secs(20);

/// The process-wide log capture and metrics recorder.
fn observed() -> &'static observe::Observed {
    observe::install("warn,opamp_gateway::policy=debug")
}

/// Captured log lines mentioning every one of `words`.
fn log_lines(words: &[&str]) -> Vec<String> {
    observed().log_lines(words)
}

async fn start(server: &ReferenceServer, dir: &Path, tune: impl FnOnce(&mut Config)) -> Gateway {
    let handle = observed().metrics.clone();
    let mut cfg = Config::from_yaml(&format!(
        "server:\n  endpoint: {}\n  reconnect: {{ initial_interval: 50ms }}\nlistener:\n  endpoint: 127.0.0.1:0\n\
         telemetry:\n  metrics:\n    endpoint: 127.0.0.1:0\n",
        server.url()
    ))
    .unwrap();
    cfg.policies = policy_support::config(dir, true);
    tune(&mut cfg);
    let g = Gateway::start(&cfg, Some(handle)).await.expect("gateway starts with its policies");
    assert!(g.wait_for_links(3, T).await);
    g
}

/// `GET path` on the admin server: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    opamp_gateway::sim::http_get(addr, path).await.expect("admin server answers")
}

/// The value of `name{...policy="<policy>"...}` (summed over other labels).
async fn metric(g: &Gateway, name: &str, policy: &str) -> Option<f64> {
    let (_, text) = get(g.metrics_addr().unwrap(), "/metrics").await;
    let label = format!("policy=\"{policy}\"");
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

async fn plain_agent(g: &Gateway) -> SimAgent {
    SimAgent::connect(AgentOptions::new(g.agent_url())).await.unwrap()
}

async fn round_trip(a: &mut SimAgent) {
    a.send(AgentToServer::default()).await.unwrap();
    assert_eq!(&a.recv(T).await.unwrap().instance_uid, a.uid().as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_filter_is_quarantined_and_a_replacement_recovers() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Default breaker (5 consecutive failures) and on_error (open); a
    // backoff no test run reaches, so the quarantine holds throughout.
    install(dir.path(), "fixture_misbehave", "loop_a", Some("quarantine_backoff: 1h\n"));
    let g = start(&server, dir.path(), |_| {}).await;

    // Each message from this agent makes the filter spin to its deadline;
    // fail-open forwards it anyway. The reply comes after the filter ran.
    let mut spinner = mode_agent(&g, "spin", 1).await;
    for _ in 0..5 {
        round_trip(&mut spinner).await;
    }
    let set = g.policies().policies().snapshot();
    assert_eq!(set.quarantined(), ["loop_a"]);
    assert_eq!(metric(&g, "opampgateway_policy_quarantined", "loop_a").await, Some(1.0));
    assert_eq!(metric(&g, "opampgateway_policy_quarantines_total", "loop_a").await, Some(1.0));
    let calls = metric(&g, "opampgateway_policy_calls_total", "loop_a").await.unwrap();

    // Quarantined: 20 new agents connect and talk, the spinner too, and
    // the policy is never called.
    let mut fleet = Vec::new();
    for _ in 0..20 {
        let mut a = plain_agent(&g).await;
        round_trip(&mut a).await;
        fleet.push(a);
    }
    for _ in 0..20 {
        round_trip(&mut spinner).await;
    }
    assert_eq!(metric(&g, "opampgateway_policy_calls_total", "loop_a").await, Some(calls));
    let skipped = metric(&g, "opampgateway_policy_quarantine_skipped_total", "loop_a").await.unwrap();
    assert!(skipped >= 40.0, "{skipped}");
    assert_eq!(metric(&g, "opampgateway_policy_errors_total", "loop_a").await, Some(5.0));
    // Logged once each: the quarantine, and the first failure only.
    assert_eq!(log_lines(&["policy quarantined", "loop_a"]).len(), 1);
    assert_eq!(log_lines(&["WARN", "policy call failed", "loop_a"]).len(), 1);

    // A good policy under the same name: a fresh breaker, the gauge back to 0.
    let mut status = g.policies().subscribe();
    install(dir.path(), "block_packages", "loop_a", None);
    wait_for(&mut status, "replacement", |s| match &s.outcome {
        ReloadOutcome::Applied(set) => set.iter().any(|p| p.name == "loop_a" && !p.hooks.filter_agent_to_server),
        _ => false,
    })
    .await;
    assert!(g.policies().policies().snapshot().quarantined().is_empty());
    assert_eq!(metric(&g, "opampgateway_policy_quarantined", "loop_a").await, Some(0.0));
    round_trip(&mut spinner).await;
    round_trip(&mut fleet[0]).await;
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_trial_lifts_the_quarantine() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = "quarantine_after: 2\nquarantine_backoff: 50ms\nquarantine_max_backoff: 50ms\n";
    install(dir.path(), "fixture_misbehave", "trial_b", Some(yaml));
    let g = start(&server, dir.path(), |_| {}).await;
    let mut spinner = mode_agent(&g, "spin", 2).await;
    round_trip(&mut spinner).await;
    round_trip(&mut spinner).await;
    assert_eq!(g.policies().policies().snapshot().quarantined(), ["trial_b"]);

    // Only well-behaved traffic now: the first message after the backoff
    // is the trial, it succeeds, and the policy is back.
    let mut a = plain_agent(&g).await;
    tokio::time::timeout(T, async {
        while !g.policies().policies().snapshot().quarantined().is_empty() {
            round_trip(&mut a).await;
        }
    })
    .await
    .expect("a trial call within the test's time");
    assert_eq!(metric(&g, "opampgateway_policy_quarantined", "trial_b").await, Some(0.0));
    assert_eq!(log_lines(&["policy recovered", "trial_b"]).len(), 1);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_printing_guest_breaks_nothing_and_its_output_is_rate_limited() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Fail-closed: a call broken by its printing would drop the message.
    install(dir.path(), "fixture_misbehave", "print_c", Some("on_error: closed\ncall_timeout: 1s\n"));
    let g = start(&server, dir.path(), |c| {
        c.policies.limits.log_lines = 3;
        c.policies.limits.log_interval = Duration::from_secs(3600);
    })
    .await;
    for n in 0..5 {
        let mut a = mode_agent(&g, "print", n).await;
        for _ in 0..4 {
            round_trip(&mut a).await;
        }
    }
    assert_eq!(metric(&g, "opampgateway_policy_errors_total", "print_c").await, None, "no call failed");
    let printed = log_lines(&["print_c", "printed to std"]);
    assert!((1..=3).contains(&printed.len()), "{printed:?}");
    // 40 calls (both directions), two lines each, three logged.
    let held = metric(&g, "opampgateway_policy_log_lines_suppressed_total", "print_c").await.unwrap();
    assert!(held >= 70.0, "{held}");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_capped() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "fixture_misbehave", "hdr_d", Some("on_error: closed\ncall_timeout: 1s\n"));
    let g = start(&server, dir.path(), |_| {}).await;
    let before = server.state().connect_requests.len();
    let o = AgentOptions::new(g.agent_url()).header("x-misbehave", "many");
    match SimAgent::connect(o).await {
        Err(AgentError::Rejected { status: 503, .. }) => {}
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    assert_eq!(server.state().connect_requests.len(), before, "the server never saw them");
    let e = log_lines(&["hdr_d", "10000 headers, more than policies.limits.max_forwarded_headers (100)"]);
    assert_eq!(e.len(), 1, "{e:?}");
    let mut fine = plain_agent(&g).await;
    round_trip(&mut fine).await;
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_directory_unloads_nothing_and_fails_readiness() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    // Enforcing: messages from `close_…` agents close their session.
    install(&dir, "fixture_misbehave", "enforce_e", Some("on_error: closed\ncall_timeout: 1s\n"));
    let g = start(&server, &dir, |c| c.policies.required = true).await;
    let metrics = g.metrics_addr().unwrap();
    let (code, body) = get(metrics, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let enforced = |mut a: SimAgent| async move {
        a.send(AgentToServer::default()).await.unwrap();
        a.recv_close(T).await.expect("closed by the policy");
    };
    enforced(mode_agent(&g, "close", 1).await).await;

    let mut status = g.policies().subscribe();
    std::fs::remove_dir_all(&dir).unwrap();
    let refused = wait_for(&mut status, "refusal", |s| matches!(s.outcome, ReloadOutcome::Refused { .. })).await;
    assert!(matches!(&refused.outcome, ReloadOutcome::Refused { file: Some(f), .. } if *f == dir), "{refused:?}");
    assert_eq!(g.policies().loaded().len(), 1, "still serving");
    enforced(mode_agent(&g, "close", 2).await).await;
    let mut fine = plain_agent(&g).await;
    round_trip(&mut fine).await;
    let (code, body) = get(metrics, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("policies degraded") && body.contains("(1) keeps serving"), "{body}");
    assert_eq!(get(metrics, "/healthz").await.0, 200, "health is about links only");
    let dir_name = dir.display().to_string();
    assert_eq!(log_lines(&["ERROR", "policy reload refused", &dir_name]).len(), 1);

    // Unloading everything takes an explicit empty directory.
    std::fs::create_dir(&dir).unwrap();
    wait_for(&mut status, "empty set", |s| applied(s) == Some(vec![])).await;
    let (code, body) = get(metrics, "/readyz").await;
    assert_eq!(code, 503, "required, and nothing serving: {body}");
    assert!(body.contains("policies: 0 serving"), "{body}");
    let mut free = mode_agent(&g, "close", 3).await;
    round_trip(&mut free).await;
    g.shutdown().await;
}

/// Issue 17.2: a looping policy holds at most `policies.concurrency` relay
/// workers. With one turn and no queue, while one call spins (breaker off,
/// a long budget) every other chain is shed, so new agents are admitted and
/// messages flow on the other worker; the spinning call is not interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_call_holds_one_worker_and_the_rest_of_the_relay_flows() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Breaker off; a budget long enough that the call still spins while the
    // test runs (it ends by itself afterwards). 5 s was once too short when
    // the whole suite ran in parallel: the ten agents below took longer.
    let yaml = "quarantine_after: 0\nquarantine_rate: 0\ncall_timeout: 15s\n";
    install(dir.path(), "fixture_misbehave", "hog_f", Some(yaml));
    let g = start(&server, dir.path(), |c| {
        c.policies.concurrency = Some(1);
        c.policies.queue = 0;
    })
    .await;
    let policies = g.policies().policies();
    let gate = policies.gate();
    assert_eq!(gate.available(), 1);

    // Its message is filtered on one worker, which spins.
    let mut hog = mode_agent(&g, "spin", 1).await;
    hog.send(AgentToServer::default()).await.unwrap();
    tokio::time::timeout(T, async {
        while gate.available() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the spinning call takes the turn");

    // Meanwhile another spinner's call is shed (fail-open), not run, and
    // new agents are admitted and round trips complete: their chains are
    // shed too, and the other worker moves their bytes.
    let mut other = mode_agent(&g, "spin", 2).await;
    round_trip(&mut other).await;
    let mut fleet = Vec::new();
    for _ in 0..10 {
        let mut a = plain_agent(&g).await;
        round_trip(&mut a).await;
        fleet.push(a);
    }
    assert_eq!(gate.available(), 0, "the first call still holds the only turn");
    let shed = metric(&g, "opampgateway_policy_errors_total", "hog_f").await.unwrap_or(0.0);
    // Each admission sheds assign + forward-headers; each round trip two filters.
    assert!(shed >= 10.0 * 4.0, "{shed}");
    assert!(log_lines(&["hog_f", "too many policy calls waiting"]).len() <= 2, "failure logs are rate-limited");
    assert!(g.policies().policies().snapshot().quarantined().is_empty(), "breaker off");
    // At least the spinning call (a quick call preempted past a tick counts too).
    let handoffs = metric(&g, "opampgateway_policy_handoffs_total", "hog_f").await.unwrap_or(0.0);
    assert!(handoffs >= 1.0, "the spinning call released its worker");

    // The spin ends at its deadline; the hog's message is forwarded. The
    // deadline is CPU time: on a box this busy test binaries starve each
    // other (four looping at once on 2 cores gave the spinning thread under
    // a quarter of a core), 15 s of it can take a minute or more.
    assert_eq!(&hog.recv(Duration::from_secs(240)).await.unwrap().instance_uid, hog.uid().as_bytes());
    assert_eq!(gate.available(), 1);
    round_trip(&mut fleet[0]).await;
    g.shutdown().await;
}

/// A spinning call holds its worker, and tokio keeps some tasks on that
/// worker alone: the one woken last (its LIFO slot, which no other worker
/// may steal; in the relay, often the link writer a session just handed a
/// frame) and the wake-ups it deferred. Once the call has run for a whole
/// tick the worker is handed to another thread, so such a task runs within
/// milliseconds, not at the call's deadline (3 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_woken_just_before_a_spinning_call_runs_while_it_spins() {
    woken_task_runs_while_a_call_spins("spin_lifo").await;
}

/// The same with `runtime.worker_threads: 1`: the worker itself moves to
/// another thread, or nothing else would run until the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn with_one_worker_a_spinning_call_gives_the_worker_away() {
    woken_task_runs_while_a_call_spins("spin_lifo1").await;
}

async fn woken_task_runs_while_a_call_spins(policy: &str) {
    let yaml = "quarantine_after: 0\nquarantine_rate: 0\ncall_timeout: 3s\n";
    let (_dir, rt) = policy_support::runtime(&[("fixture_misbehave", policy, Some(yaml))]);
    // An instance ready, so the call runs inline (waiting for one would move
    // it off the worker anyway).
    let pool = rt.policy(policy).unwrap();
    tokio::time::timeout(T, async {
        while pool.idle_instances() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the refill thread makes an instance");
    let set = rt.policies().snapshot();
    let (ran, woken_ran) = tokio::sync::oneshot::channel::<()>();
    // Wall time: with one worker stuck, tokio's own timers would not fire.
    let started = std::time::Instant::now();
    let caller = tokio::spawn(async move {
        // Spawned from a worker: it goes to this worker's LIFO slot.
        tokio::spawn(async move {
            let _ = ran.send(());
        });
        // Then, in the same poll, a call that spins on this worker.
        set.filter(opamp_gateway::policy::Direction::AgentToServer, b"spin", bytes::Bytes::new())
    });
    woken_ran.await.unwrap();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "the woken task ran while the call spun, not {waited:?} later");
    let outcome = caller.await.unwrap();
    assert!(matches!(outcome, opamp_gateway::policy::FilterOutcome::Forward(_)), "fail-open at the deadline");
}

/// Issues 17.3 and 15.6: an instance that hit its memory limit is dropped
/// and replaced off the message path; the next call gets a fresh instance
/// and succeeds; a policy never has more than its target of instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bombs_are_replaced_off_path_and_instances_stay_bounded() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = "quarantine_after: 0\nquarantine_rate: 0\nmemory_limit: 8388608\n";
    install(dir.path(), "fixture_misbehave", "bomb_g", Some(yaml));
    let g = start(&server, dir.path(), |c| {
        c.policies.instances = Some(2);
        c.policies.concurrency = Some(2);
    })
    .await;
    let policy = g.policies().policy("bomb_g").unwrap();
    let full = || async {
        tokio::time::timeout(T, async {
            while policy.idle_instances() < 2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the refill thread tops the pool up");
    };
    full().await;

    // Four bombing agents at once, each message failing on memory.
    let mut bombers = Vec::new();
    for n in 0..4 {
        bombers.push(mode_agent(&g, "bomb", n).await);
    }
    let mut rounds = Vec::new();
    for mut b in bombers {
        rounds.push(tokio::spawn(async move {
            for _ in 0..5 {
                round_trip(&mut b).await; // fail-open: forwarded anyway
            }
            b
        }));
    }
    let mut plain = plain_agent(&g).await;
    for _ in 0..5 {
        round_trip(&mut plain).await;
        assert!(policy.live_instances() <= 2, "{}", policy.live_instances());
    }
    for r in rounds {
        r.await.unwrap();
    }
    let errors = metric(&g, "opampgateway_policy_errors_total", "bomb_g").await.unwrap();
    assert!(errors >= 20.0, "every bomb failed: {errors}");
    assert!(log_lines(&["bomb_g", "exceeded its memory limit"]).len() <= 2, "{:?}", log_lines(&["bomb_g"]));
    // Replaced, not grown: back to two idle instances, and they work.
    full().await;
    assert_eq!(policy.live_instances(), 2);
    let calls = metric(&g, "opampgateway_policy_calls_total", "bomb_g").await.unwrap();
    round_trip(&mut plain).await;
    assert_eq!(metric(&g, "opampgateway_policy_errors_total", "bomb_g").await, Some(errors), "no new failure");
    assert!(metric(&g, "opampgateway_policy_calls_total", "bomb_g").await.unwrap() >= calls + 2.0);
    g.shutdown().await;
}
