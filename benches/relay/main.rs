//! The gateway's benchmark suite: capacity, memory, latency and throughput,
//! each next to its comparison in the same run (DESIGN §6).
//!
//! `scripts/bench` runs it (release build, nginx installed, fd limit raised)
//! and it writes `docs/BENCHMARKS.md` and `docs/benchmarks.json`.
//! The gateway runs as a separate process so its RSS and CPU are its own; the
//! reference server and the load generator share this process.
//!
//! Figures, not assertions: nothing here fails because a number is bad.

mod containment;
mod cpu_rounds;
mod gateway_proc;
mod load;
mod nginx;
mod policies;
mod report;
mod soak;
mod storm_memory;
mod suite;
#[path = "../../tests/support/test_ca.rs"]
mod test_ca;
mod tls_storm;

/// Sections of docs/BENCHMARKS.md written by hand (their commands are in
/// them), kept when the suite rewrites the file.
const HAND_MEASURED: [&str; 2] = ["storm-rss", "cpu-per-message"];

/// The `<!-- name:begin -->` … `<!-- name:end -->` section of `text`.
fn marked<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let (begin, end) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let b = text.find(&begin)?;
    let e = text[b..].find(&end)? + b;
    Some(&text[b..e + end.len()])
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = suite::Only::from_args(&args)?;
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "docs/BENCHMARKS.md".into());
    // `cargo bench` passes --bench; `cargo test --all-targets` builds and runs
    // this binary without it, and must not start a multi-minute suite.
    if !args.iter().any(|a| a == "--bench") {
        println!("relay benchmark: run it with scripts/bench (or cargo bench --bench relay)");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // `--soak DURATION` (issue 14): churn alone, rewriting only its section.
    if let Some(i) = args.iter().position(|a| a == "--soak") {
        let text = args.get(i + 1).map(String::as_str).unwrap_or_default();
        let duration = humantime::parse_duration(text)
            .map_err(|e| anyhow::anyhow!("--soak: expected a duration such as 10m, got {text:?}: {e}"))?;
        return rt.block_on(soak::run(duration, &out));
    }
    let hooks = args.iter().position(|a| a == "--hooks").and_then(|i| args.get(i + 1)).map(std::path::PathBuf::from);
    let mut report = rt.block_on(suite::run(suite::Scale::new(quick, only)))?;
    if let Some(hooks) = hooks {
        report.hook_costs(&hooks);
    }
    report.finish();
    // The full suite rewrites the file: keep the last soak's section, and
    // the sections measured by hand (between `<!-- name:begin/end -->`).
    let old = std::fs::read_to_string(&out).unwrap_or_default();
    let kept = soak::section(&old).map(str::to_owned);
    report.write(&out)?;
    let mut text = std::fs::read_to_string(&out)?;
    if let Some(kept) = kept {
        text = soak::splice(&text, &kept);
    }
    for name in HAND_MEASURED {
        if let Some(section) = marked(&old, name) {
            text = format!(
                "{}

{section}
",
                text.trim_end()
            );
        }
    }
    std::fs::write(&out, text)?;
    println!("wrote {} and {}", out.display(), out.with_file_name("benchmarks.json").display());
    Ok(())
}
