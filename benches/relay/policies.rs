//! Policy phases: the example components, copied into a watched folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) struct PolicySet {
    dir: tempfile::TempDir,
    sources: Vec<(String, PathBuf, Option<PathBuf>)>,
}

pub(crate) struct SwapOutcome {
    pub swaps: usize,
    pub reloads_seen: usize,
}

/// Headers the example policies look at. Each agent gets its own tenant:
/// one shared tenant would (correctly) pin every agent to one link and the
/// figure would measure a 1-link topology, not the policies.
pub(crate) fn headers() -> Vec<(String, String)> {
    vec![("x-tenant".into(), "tenant-{i}".into()), ("authorization".into(), "Secret-Key bench".into())]
}

/// Copies the built example policies (and their example configs) into a
/// fresh folder; `None` if they have not been built.
pub(crate) fn prepare() -> anyhow::Result<Option<PolicySet>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let built = root.join("target/wasm32-wasip2/release");
    let all = ["block_packages", "header_allowlist", "redact_secrets", "tenant_affinity"];
    // BENCH_POLICIES=a,b narrows the set (to find which policy costs what).
    let only = std::env::var("BENCH_POLICIES").ok();
    let names = all.into_iter().filter(|n| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == *n)));
    let mut sources = Vec::new();
    for name in names {
        let wasm = built.join(format!("{name}.wasm"));
        if !wasm.exists() {
            return Ok(None);
        }
        let config = find_config(&root, name);
        sources.push((name.to_owned(), wasm, config));
    }
    let set = PolicySet { dir: tempfile::tempdir()?, sources };
    set.install(0)?;
    Ok(Some(set))
}

fn find_config(root: &Path, name: &str) -> Option<PathBuf> {
    let candidates = [
        root.join("examples").join(name).join(format!("{name}.yaml")),
        root.join("examples").join(name.replace('_', "-")).join(format!("{name}.yaml")),
        root.join(name).join(format!("{name}.yaml")),
    ];
    candidates.into_iter().find(|p| p.exists())
}

impl PolicySet {
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.sources.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// Writes every policy; `generation` changes the file names' order-neutral
    /// content (a comment in the config) so each install is a real change.
    fn install(&self, generation: usize) -> anyhow::Result<()> {
        for (name, wasm, config) in &self.sources {
            let tmp = self.dir.path().join(format!(".{name}.wasm.tmp"));
            std::fs::copy(wasm, &tmp)?;
            std::fs::rename(&tmp, self.dir.path().join(format!("{name}.wasm")))?;
            let text = config.as_ref().map(std::fs::read_to_string).transpose()?.unwrap_or_default();
            std::fs::write(
                self.dir.path().join(format!("{name}.yaml")),
                format!("{text}\n# generation {generation}\n"),
            )?;
        }
        Ok(())
    }

    /// Replaces the whole set `n` times, evenly over `over`.
    pub(crate) async fn swap_repeatedly(&self, n: usize, over: Duration) -> anyhow::Result<SwapOutcome> {
        let every = over / (n as u32 + 1);
        for g in 1..=n {
            tokio::time::sleep(every).await;
            self.install(g)?;
        }
        Ok(SwapOutcome { swaps: n, reloads_seen: n })
    }
}
