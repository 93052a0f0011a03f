//! A misbehaving policy (`policies/fixtures/misbehave`, a real component)
//! must never crash, stall or leak the gateway: a trap, an infinite loop and
//! a memory bomb each fail one call, quickly, and the next call works. Also:
//! the sandbox grants no ambient authority, answers are validated, failure
//! modes apply, and modules that cannot load are refused with a reason.

mod policy_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opamp_gateway::policy::runtime::PolicyRuntime;
use opamp_gateway::policy::wasm::{PolicyError, WasmPolicy};
use opamp_gateway::policy::{
    AssignDecision, AssignInput, Direction, FilterOutcome, HookError, LinkInfo, Policy, Route, Transport, UpstreamInfo,
    Verdict, DEFAULT_UPSTREAM,
};
use policy_support::{config, install, runtime};

/// A small valid AgentToServer: uid "0123456789abcdef", sequence_num 1.
fn message() -> Bytes {
    let mut m = vec![0x0a, 16];
    m.extend_from_slice(b"0123456789abcdef");
    m.extend_from_slice(&[0x10, 1]);
    Bytes::from(m)
}

/// Generous bound for "returned promptly" on a loaded 2-core CI box.
const PROMPT: Duration = Duration::from_millis(800);

/// Deadlines are wall-clock: on a 2-core box running these tests in
/// parallel (some of them spinning), a thread can be preempted for longer
/// than the 5 ms default in the middle of a trivial call. Tests that need
/// their well-behaved calls to succeed give the policy more room.
const ROOMY: &str = "call_timeout: 100ms\n";

fn misbehave(yaml: Option<&str>) -> (tempfile::TempDir, PolicyRuntime, Arc<WasmPolicy>) {
    let yaml = Some(yaml.unwrap_or(ROOMY));
    let (dir, rt) = runtime(&[("fixture_misbehave", "m", yaml)]);
    let p = rt.policy("m").unwrap();
    (dir, rt, p)
}

fn filter(p: &WasmPolicy, mode: &str) -> (Result<Verdict, HookError>, Duration) {
    let start = Instant::now();
    let r = p.filter(Direction::AgentToServer, mode.as_bytes(), &message());
    (r, start.elapsed())
}

/// The default upstream with one connected link.
fn one_link() -> [UpstreamInfo; 1] {
    [UpstreamInfo { name: DEFAULT_UPSTREAM.into(), links: vec![LinkInfo { index: 0, load: 0, connected: true }] }]
}

fn headers(mode: &str) -> Vec<(String, String)> {
    vec![("x-misbehave".into(), mode.into()), ("authorization".into(), "k".into())]
}

#[test]
fn a_trap_fails_one_call_and_the_next_works() {
    let (_d, _rt, p) = misbehave(None);
    let (r, took) = filter(&p, "trap");
    match r {
        Err(HookError::Trap(msg)) => assert!(msg.contains("asked to trap"), "panic message kept: {msg}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(took < PROMPT, "{took:?}");
    assert_eq!(filter(&p, "ok").0.unwrap(), Verdict::Forward);
    // Every hook is covered the same way.
    assert!(matches!(p.forward_headers(&headers("trap")), Err(HookError::Trap(_))));
    assert_eq!(p.forward_headers(&headers("ok")).unwrap(), headers("ok"));
}

#[test]
fn visible_headers_hide_the_rest_from_every_hook_and_the_rest_goes_on_unchanged() {
    // The fixture misbehaves when it sees `x-misbehave`: shown only
    // `authorization`, it never sees its trigger, in any hook.
    let (_d, _rt, p) = misbehave(Some("call_timeout: 100ms\nvisible_headers: [Authorization]\n"));
    let h = headers("trap");
    let out = p.forward_headers(&h).unwrap();
    assert_eq!(out, h, "the trap was not seen: the headers as they came");
    let ups = one_link();
    let link = |i| Some(Route { upstream: Some(DEFAULT_UPSTREAM.into()), link: Some(i) });
    let input = AssignInput { headers: &h, remote_addr: "1.2.3.4:5", transport: Transport::Http, upstreams: &ups };
    assert_eq!(p.assign(&input).unwrap(), link(0), "the trap was not seen");
    let max = headers("max");
    let input = AssignInput { headers: &max, ..input };
    assert_eq!(p.assign(&input).unwrap(), link(0));
    // Control: shown every header, the same calls misbehave.
    let (_d, _rt, all) = misbehave(None);
    assert!(matches!(all.forward_headers(&headers("trap")), Err(HookError::Trap(_))));
    assert_eq!(all.assign(&input).unwrap(), link(u32::MAX), "unchecked here: the chain refuses it");

    // A policy cannot answer a header it was not shown: `probe` answers
    // x-fs, x-env, ... of which it was shown none.
    let (_d, _rt, p) = misbehave(Some("call_timeout: 100ms\nvisible_headers: [x-misbehave]\n"));
    match p.forward_headers(&headers("probe")) {
        Err(HookError::Invalid(m)) => assert!(m.contains("x-fs") && m.contains("visible_headers"), "{m}"),
        other => panic!("expected an invalid answer, got {other:?}"),
    }
}

#[test]
fn an_infinite_loop_hits_the_deadline() {
    let (_d, _rt, p) = misbehave(Some("call_timeout: 20ms\n"));
    for _ in 0..3 {
        let (r, took) = filter(&p, "spin");
        assert!(matches!(r, Err(HookError::Timeout)), "{r:?}");
        assert!(took >= Duration::from_millis(19) && took < PROMPT, "{took:?}");
        assert_eq!(filter(&p, "ok").0.unwrap(), Verdict::Forward);
    }
    let ups = one_link();
    let h = headers("spin");
    let input = AssignInput { headers: &h, remote_addr: "1.2.3.4:5", transport: Transport::Http, upstreams: &ups };
    assert!(matches!(p.assign(&input), Err(HookError::Timeout)));

    // The default 5 ms budget.
    let (_d, rt) = runtime(&[("fixture_misbehave", "d", None)]);
    let (r, took) = filter(&rt.policy("d").unwrap(), "spin");
    assert!(matches!(r, Err(HookError::Timeout)), "{r:?}");
    assert!(took >= Duration::from_millis(4) && took < PROMPT, "{took:?}");
}

#[test]
fn a_loop_after_a_quiet_spell_still_hits_the_deadline() {
    // The epoch ticker sleeps once no call has started for about 100 ms;
    // the call that finds it asleep must wake it, or it would spin on
    // unchecked. The quiet spell is the condition under test, so it is
    // waited out (nothing to observe from outside the engine).
    let (_d, _rt, p) = misbehave(Some("call_timeout: 20ms\n"));
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(400));
        let (r, took) = filter(&p, "spin");
        assert!(matches!(r, Err(HookError::Timeout)), "{r:?}");
        assert!(took >= Duration::from_millis(19) && took < PROMPT, "{took:?}");
    }
    assert_eq!(filter(&p, "ok").0.unwrap(), Verdict::Forward);
}

#[test]
fn a_memory_bomb_hits_the_limit() {
    // A generous deadline, so what stops the bomb is the memory limit.
    let (_d, _rt, p) = misbehave(Some("memory_limit: 8388608\ncall_timeout: 200ms\n"));
    for _ in 0..3 {
        let (r, took) = filter(&p, "bomb");
        assert!(matches!(r, Err(HookError::Memory)), "{r:?}");
        assert!(took < PROMPT, "{took:?}");
        assert_eq!(filter(&p, "ok").0.unwrap(), Verdict::Forward);
    }
}

#[test]
fn failed_instances_are_replaced_not_reused_under_concurrency() {
    let (_d, _rt, p) = misbehave(None);
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let mode = match (i + t) % 5 {
                        0 => "trap",
                        1 => "spin",
                        _ => "ok",
                    };
                    let r = p.filter(Direction::ServerToAgent, mode.as_bytes(), &message());
                    match mode {
                        "ok" => assert_eq!(r.unwrap(), Verdict::Forward),
                        "spin" => assert!(matches!(r, Err(HookError::Timeout)), "{r:?}"),
                        _ => assert!(matches!(r, Err(HookError::Trap(_))), "{r:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The pool never holds more than its configured idle instances.
    assert!(p.idle_instances() <= 2, "{}", p.idle_instances());
}

#[test]
fn the_sandbox_grants_nothing() {
    let (_d, _rt, p) = misbehave(None);
    let out = p.forward_headers(&headers("probe")).unwrap();
    let get = |k: &str| out.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert!(get("x-fs").starts_with("denied"), "{out:?}");
    assert!(get("x-dir").starts_with("denied"), "{out:?}");
    assert!(get("x-net").starts_with("denied"), "{out:?}");
    assert_eq!(get("x-env"), "0");
    assert_eq!(get("x-args"), "0");
    assert_eq!(get("x-time"), "0", "clocks are frozen at the epoch");
}

#[test]
fn invalid_answers_are_errors() {
    let (_d, _rt, p) = misbehave(None);
    assert!(matches!(filter(&p, "bad").0, Err(HookError::Invalid(_))), "garbage replacement");
    assert!(matches!(filter(&p, "olduid").0, Err(HookError::Invalid(_))), "uid rewritten");
    assert!(matches!(filter(&p, "setuid").0, Err(HookError::Invalid(_))), "uid set through set-field");
    assert_eq!(filter(&p, "echo").0.unwrap(), Verdict::Replace(message()));
    assert!(matches!(p.forward_headers(&headers("bad")), Err(HookError::Invalid(_))));
    // Logging more than the per-call cap is fine.
    assert_eq!(filter(&p, "log").0.unwrap(), Verdict::Forward);
}

#[test]
fn fail_open_skips_the_policy() {
    let (_d, rt, _p) = misbehave(None);
    let set = rt.policies().snapshot();
    assert_eq!(set.filter(Direction::AgentToServer, b"spin", message()), FilterOutcome::Forward(message()));
    assert_eq!(set.forward_headers(&headers("trap")).unwrap(), headers("trap"));
    let ups = one_link();
    let h = headers("bomb");
    let input = AssignInput { headers: &h, remote_addr: "1.2.3.4:5", transport: Transport::WebSocket, upstreams: &ups };
    assert_eq!(set.assign(&input).unwrap(), AssignDecision::Default);
    // An answer naming a link or an upstream that does not exist is no opinion.
    for mode in ["bad", "nowhere"] {
        let h = headers(mode);
        let input = AssignInput { headers: &h, ..input };
        assert_eq!(set.assign(&input).unwrap(), AssignDecision::Default, "{mode}");
    }
    let h = headers("ok");
    let input = AssignInput { headers: &h, ..input };
    assert_eq!(set.assign(&input).unwrap(), AssignDecision::Route { upstream: 0, link: Some(0) });
}

#[test]
fn fail_closed_blocks_what_it_judged() {
    let (_d, rt, _p) = misbehave(Some("on_error: closed\ncall_timeout: 100ms\n"));
    let set = rt.policies().snapshot();
    assert_eq!(set.filter(Direction::AgentToServer, b"trap", message()), FilterOutcome::Drop);
    assert_eq!(set.filter(Direction::AgentToServer, b"ok", message()), FilterOutcome::Forward(message()));
    let refused = set.forward_headers(&headers("spin")).unwrap_err();
    assert_eq!(refused.policy, "m");
    assert!(matches!(refused.error, HookError::Timeout));
    let ups = one_link();
    let h = headers("trap");
    let input = AssignInput { headers: &h, remote_addr: "1.2.3.4:5", transport: Transport::WebSocket, upstreams: &ups };
    assert!(set.assign(&input).is_err());
}

fn load_err(files: &[(&str, &[u8])]) -> PolicyError {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let mut cfg = config(dir.path(), false);
    cfg.init_timeout = Duration::from_millis(200);
    match PolicyRuntime::start(&cfg) {
        Ok(_) => panic!("expected {files:?} to be refused"),
        Err(e) => e,
    }
}

#[test]
fn modules_that_cannot_load_are_refused_with_a_reason() {
    let e = load_err(&[("junk.wasm", b"this is not wasm")]);
    assert!(matches!(e, PolicyError::Compile { .. }), "{e}");
    assert!(e.to_string().contains("junk.wasm"), "{e}");

    // A core module is not a component.
    let e = load_err(&[("core.wasm", b"\0asm\x01\0\0\0")]);
    assert!(matches!(e, PolicyError::Compile { .. }), "{e}");

    let wrong = std::fs::read(policy_support::wasm("fixture_wrong_world")).unwrap();
    let e = load_err(&[("wrong.wasm", &wrong)]);
    assert!(matches!(e, PolicyError::Interface { .. }), "{e}");
    assert!(e.to_string().contains("wrong.wasm") && e.to_string().contains("opamp-gateway:policy"), "{e}");

    let m = std::fs::read(policy_support::wasm("fixture_misbehave")).unwrap();
    for (yaml, expect) in [
        ("init: fail\n", "asked to fail"),
        ("init: trap\n", "asked to trap"),
        ("init: spin\n", "init_timeout"),
        ("init: bomb\nmemory_limit: 4194304\n", "memory"),
        ("on_error: sometimes\n", "on_error"),
        ("a: [unclosed\n", "m.yaml"),
    ] {
        let start = Instant::now();
        let e = load_err(&[("m.wasm", &m), ("m.yaml", yaml.as_bytes())]);
        assert!(e.to_string().contains(expect), "{yaml:?}: {e}");
        assert!(e.to_string().contains("m.wasm") || e.to_string().contains("m.yaml"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}

#[test]
fn install_helper_places_configs() {
    // Guards the helper the other tests rely on.
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "block_packages", "x", Some("on_error: open\n"));
    assert!(dir.path().join("x.wasm").exists() && dir.path().join("x.yaml").exists());
}

#[tokio::test]
async fn filter_fields_call_a_policy_only_for_messages_that_carry_them() {
    let yaml = "call_timeout: 100ms\nfilter: drop\nfilter_agent_to_server: [effective_config]\n";
    let (_d, rt, _p) = misbehave(Some(yaml));
    let set = rt.policies().snapshot();
    // A heartbeat (uid and sequence number only): the policy, which drops
    // everything it sees, is not called.
    assert_eq!(set.filter(Direction::AgentToServer, b"", message()), FilterOutcome::Forward(message()));
    // With an effective config (field 6, empty): called, and its drop applies.
    let mut with = message().to_vec();
    with.extend_from_slice(&[0x32, 0]);
    assert_eq!(set.filter(Direction::AgentToServer, b"", Bytes::from(with)), FilterOutcome::Drop);
    // Once the keys are set, a direction left out is not filtered at all.
    assert_eq!(set.filter(Direction::ServerToAgent, b"", message()), FilterOutcome::Forward(message()));

    // The relay's path takes no turn of the gate for a message no policy
    // wants: with every turn held, the heartbeat still passes at once, and
    // a message with an effective config waits for a turn.
    let policies = rt.policies();
    let mut held = Vec::new();
    while policies.gate().available() > 0 {
        held.push(policies.gate().enter().await);
    }
    let passed = policies.filter(&set, Direction::AgentToServer, b"", message());
    let passed = tokio::time::timeout(Duration::from_secs(5), passed).await;
    assert_eq!(passed.expect("not held up by the gate"), FilterOutcome::Forward(message()));
    let mut with = message().to_vec();
    with.extend_from_slice(&[0x32, 0]);
    let waits = policies.filter(&set, Direction::AgentToServer, b"", Bytes::from(with));
    assert!(tokio::time::timeout(Duration::from_millis(200), waits).await.is_err(), "waits for the turn");
    drop(held);

    // A misspelt field is refused at load, naming the key and the field.
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "fixture_misbehave", "m", Some("filter_server_to_agent: [packages_availble]\n"));
    let err = PolicyRuntime::start(&config(dir.path(), false)).err().expect("the policy is refused");
    let msg = err.to_string();
    assert!(msg.contains("filter_server_to_agent") && msg.contains("packages_availble"), "{msg}");
}
