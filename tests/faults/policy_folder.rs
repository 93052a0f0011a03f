//! The policies folder under abuse (issue 14.3): whatever lands in it, the
//! set already serving keeps serving and the reason is logged, naming the
//! file. A policy that closes `close_…` agents proves which set serves.

use std::path::Path;

use opamp_gateway::policy::runtime::{ReloadOutcome, ReloadStatus};
use opamp_gateway::protocol::proto::AgentToServer;
use opamp_gateway::sim::server::{ReferenceServer, ReferenceServerConfig};
use opamp_gateway::Gateway;
use tokio::sync::watch;

use crate::policy_support::{self, install, mode_agent, wait_for};
use crate::support::{self, log_lines, T};

/// The `guard` policy still serves: it closes a `close_…` agent.
async fn still_enforced(g: &Gateway, n: usize) {
    let mut a = mode_agent(g, "close", n).await;
    a.send(AgentToServer::default()).await.unwrap();
    a.recv_close(T).await.expect("closed by the serving policy");
    assert_eq!(g.policies().loaded().len(), 1, "the serving set is unchanged");
}

/// Waits for a refusal newer than `after`; returns its file and reason.
async fn refused(status: &mut watch::Receiver<ReloadStatus>, after: u64) -> (Option<std::path::PathBuf>, String) {
    let s =
        wait_for(status, "a refusal", |s| s.generation > after && matches!(s.outcome, ReloadOutcome::Refused { .. }))
            .await;
    match s.outcome {
        ReloadOutcome::Refused { file, reason } => (file, reason),
        _ => unreachable!(),
    }
}

/// Waits until the folder is back to describing the serving set.
async fn healed(status: &mut watch::Receiver<ReloadStatus>, after: u64) -> u64 {
    let s = wait_for(status, "the folder to heal", |s| {
        s.generation > after && matches!(s.outcome, ReloadOutcome::Unchanged)
    })
    .await;
    s.generation
}

fn generation(status: &watch::Receiver<ReloadStatus>) -> u64 {
    status.borrow().generation
}

fn logged_refusal(file: &Path, words: &str) {
    let file = file.display().to_string();
    let lines = log_lines(&["ERROR", "policy reload refused", &file, words]);
    assert!(!lines.is_empty(), "no refusal logged for {file} ({words})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_lands_in_the_folder_the_serving_set_keeps_serving() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    install(&dir, "fixture_misbehave", "guard", Some("on_error: closed\ncall_timeout: 1s\n"));
    let g = support::gateway(&server.url(), |c| c.policies = policy_support::config(&dir, true)).await;
    let mut status = g.policies().subscribe();
    still_enforced(&g, 1).await;

    // Each step reads the reload generation before touching the folder, so
    // the reload it causes is never mistaken for an earlier one.

    // A directory named like a module.
    let fake = dir.join("x.wasm");
    let before = generation(&status);
    std::fs::create_dir(&fake).unwrap();
    let (file, reason) = refused(&mut status, before).await;
    assert_eq!(file.as_deref(), Some(fake.as_path()));
    assert!(reason.contains("is a directory"), "{reason}");
    logged_refusal(&fake, "is a directory");
    still_enforced(&g, 2).await;
    let before = generation(&status);
    std::fs::remove_dir(&fake).unwrap();
    healed(&mut status, before).await;

    // A 200 MB module (sparse: its size is what counts). Refused unread.
    let big = dir.join("big.wasm");
    let before = generation(&status);
    std::fs::File::create(&big).unwrap().set_len(200 << 20).unwrap();
    let (file, reason) = refused(&mut status, before).await;
    assert_eq!(file.as_deref(), Some(big.as_path()));
    assert!(reason.contains("over policies.limits.max_module_size"), "{reason}");
    logged_refusal(&big, "max_module_size");
    still_enforced(&g, 3).await;
    let before = generation(&status);
    std::fs::remove_file(&big).unwrap();
    healed(&mut status, before).await;

    // A symlink loop (unix: symlinks elsewhere need privileges).
    #[cfg(unix)]
    {
        let a = dir.join("loop.wasm");
        let before = generation(&status);
        std::os::unix::fs::symlink(dir.join("loop2.wasm"), &a).unwrap();
        std::os::unix::fs::symlink(&a, dir.join("loop2.wasm")).unwrap();
        let (file, reason) = refused(&mut status, before).await;
        assert!(file.is_some_and(|f| f.starts_with(&dir)), "names a file in the folder");
        assert!(reason.contains("cannot read"), "{reason}");
        still_enforced(&g, 4).await;
        let before = generation(&status);
        std::fs::remove_file(&a).unwrap();
        std::fs::remove_file(dir.join("loop2.wasm")).unwrap();
        healed(&mut status, before).await;
    }

    // A thousand files that are no policy: the watcher lets them pass, and
    // a reload asked for by hand finds the set unchanged.
    for i in 0..1000 {
        std::fs::write(dir.join(format!("junk-{i:04}.txt")), b"not a policy").unwrap();
    }
    let manual = g.policies().reload();
    assert_eq!(manual.outcome, ReloadOutcome::Unchanged, "{manual:?}");
    still_enforced(&g, 5).await;

    // The folder replaced by a file.
    let before = generation(&status);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"oops").unwrap();
    let (file, reason) = refused(&mut status, before).await;
    assert_eq!(file.as_deref(), Some(dir.as_path()));
    assert!(reason.contains("cannot read"), "{reason}");
    still_enforced(&g, 6).await;

    // Put back whole (built beside it, renamed into place), with the same
    // policy: the set is unchanged, nothing recompiled.
    let staged = parent.path().join("staged");
    std::fs::create_dir(&staged).unwrap();
    install(&staged, "fixture_misbehave", "guard", Some("on_error: closed\ncall_timeout: 1s\n"));
    let before = generation(&status);
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&staged, &dir).unwrap();
    healed(&mut status, before).await;
    still_enforced(&g, 7).await;
    let mut fine = support::agent(&g).await;
    support::round_trip(&mut fine).await;
    g.shutdown().await;
}

/// A compile cache that cannot be written (its directory would have to be
/// made inside a regular file): policies still load, compiled every time,
/// and the cache's trouble is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_compile_cache_only_costs_the_cache() {
    let server = ReferenceServer::start(ReferenceServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"").unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    install(&policies, "fixture_misbehave", "uncached", Some("on_error: closed\ncall_timeout: 1s\n"));
    let g = support::gateway(&server.url(), |c| {
        c.policies = policy_support::config(&policies, false);
        c.policies.cache_dir = Some(blocker.join("cache"));
    })
    .await;
    assert_eq!(g.policies().loaded().len(), 1, "loaded without a cache");
    let mut a = mode_agent(&g, "close", 1).await;
    a.send(AgentToServer::default()).await.unwrap();
    a.recv_close(T).await.expect("the policy serves");
    let lines = log_lines(&["compile cache unavailable"]);
    assert!(!lines.is_empty(), "the cache's failure is logged");
    g.shutdown().await;
}
