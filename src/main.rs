//! The `opamp-gateway` binary: run, check a config, run the demo.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use opamp_gateway::config::Config;
use opamp_gateway::telemetry;
use opamp_gateway::Gateway;

mod demo;

#[derive(Parser)]
#[command(version, about = "A programmable OpAMP gateway", long_about = None)]
struct Cli {
    /// Config file (YAML). For `policy check` and `policy replay`, the
    /// policy's own config.
    #[arg(long, short, global = true, env = "OPAMP_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate a config file and exit (non-zero on error).
    Check,
    /// Self-contained demo on loopback: reference server, gateway, fleet.
    Demo(demo::DemoArgs),
    /// Work with Wasm policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy offline, exactly as the gateway would load it:
    /// compile, match the WIT, run init with its config, then call each
    /// hook it announces on synthetic traffic under the gateway's limits.
    /// Exits non-zero if any call fails.
    ///
    /// `--config` names the policy's own YAML (default: `<name>.yaml` next
    /// to the component, if present).
    Check {
        /// The component (`<name>.wasm`).
        wasm: PathBuf,
        /// A gateway config whose `policies:` limits (timeouts, memory,
        /// answer caps) and `max_message_size`s apply.
        #[arg(long)]
        gateway_config: Option<PathBuf>,
        /// Calls per announced hook (0: load and init only).
        #[arg(long, default_value_t = opamp_gateway::policy::wasm::CheckReport::DEFAULT_CALLS)]
        calls: usize,
    },
    /// Run a policy offline over `telemetry.capture` files and print what
    /// it would have done: a verdict summary by hook, then each message it
    /// would drop, replace or close on. `--config` as for `check`.
    Replay {
        /// The component (`<name>.wasm`).
        wasm: PathBuf,
        /// Capture files, oldest first (e.g. capture.jsonl.1 capture.jsonl).
        #[arg(required = true)]
        captures: Vec<PathBuf>,
        /// A gateway config: its `policies:` limits and its upstreams (what
        /// `assign` and `admit` are shown).
        #[arg(long)]
        gateway_config: Option<PathBuf>,
        /// Changed messages listed at most.
        #[arg(long, default_value_t = 50)]
        show: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own narrative; only warnings from the gateway.
    // `policy check` reports every failure itself.
    let default_level = match cli.command {
        Some(Command::Demo(_)) => "warn",
        Some(Command::Policy(_)) => "error",
        _ => "info",
    };
    // `telemetry.logs` applies when running or checking a config. Read it
    // before logging starts (the load is repeated, logged, below).
    let logs = match cli.command {
        None | Some(Command::Run | Command::Check) => {
            cli.config.as_deref().and_then(|p| Config::load(p).ok()).map(|c| c.telemetry.logs)
        }
        _ => None,
    };
    if let Err(e) = telemetry::logs::init(&logs.unwrap_or_default(), default_level) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(cli.config),
        Command::Run => load(cli.config)
            .and_then(|config| runtime(config.runtime.worker_threads).and_then(|rt| rt.block_on(run(config)))),
        Command::Demo(args) => runtime(None).and_then(|rt| rt.block_on(demo::run(args))),
        Command::Policy(PolicyCommand::Check { wasm, gateway_config, calls }) => {
            policy_check(gateway_config, &wasm, cli.config, calls)
        }
        Command::Policy(PolicyCommand::Replay { wasm, captures, gateway_config, show }) => {
            policy_replay(gateway_config, &wasm, cli.config, &captures, show)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The multi-threaded runtime, with `runtime.worker_threads` workers if set.
/// Multi-threaded even with one worker: a policy call that may block moves
/// off it with `block_in_place`, which a current-thread runtime lacks.
fn runtime(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build().context("starting the async runtime")
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = path.context("no config file: pass --config gateway.yaml (or set OPAMP_GATEWAY_CONFIG)")?;
    Ok(Config::load(&path)?)
}

fn check(path: Option<PathBuf>) -> anyhow::Result<()> {
    let shown = path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let config = load(path)?;
    println!(
        "{shown}: ok (upstream {} over {} links, listener {})",
        config.server.endpoint, config.server.connections, config.listener.endpoint
    );
    Ok(())
}

/// `policy check`: the gateway config (if given) supplies the sandbox
/// limits and answer caps, as the gateway itself would apply them.
fn policy_check(
    config: Option<PathBuf>,
    wasm: &std::path::Path,
    policy_config: Option<PathBuf>,
    calls: usize,
) -> anyhow::Result<()> {
    let limits = match config {
        Some(path) => {
            let c = Config::load(&path)?;
            c.policies.for_relay(c.server.max_message_size.as_usize(), c.listener.max_message_size.as_usize())
        }
        None => Default::default(),
    };
    let yaml = policy_config.or_else(|| Some(wasm.with_extension("yaml")).filter(|p| p.exists()));
    let mut report = opamp_gateway::policy::wasm::check(wasm, yaml.as_deref(), &limits)?;
    report.exercise(&limits, calls);
    println!("{report}");
    let failures = report.failures();
    if !failures.is_empty() {
        anyhow::bail!(
            "policy {} failed {} kind(s) of hook call:\n  {}",
            report.name,
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// `policy replay`: the gateway config (if given) supplies the limits and
/// the upstreams `assign` sees (every link connected, idle).
fn policy_replay(
    config: Option<PathBuf>,
    wasm: &std::path::Path,
    policy_config: Option<PathBuf>,
    captures: &[PathBuf],
    show: usize,
) -> anyhow::Result<()> {
    use opamp_gateway::policy::{LinkInfo, UpstreamInfo};
    let c = match config {
        Some(path) => Config::load(&path)?,
        None => Config::new("ws://127.0.0.1:4320/v1/opamp"), // only its defaults are read
    };
    let limits = c.policies.for_relay(c.server.max_message_size.as_usize(), c.listener.max_message_size.as_usize());
    let upstreams: Vec<_> = c
        .upstream_list()
        .into_iter()
        .map(|(name, server, _)| UpstreamInfo {
            name: name.to_owned(),
            links: (0..server.connections as u32).map(|index| LinkInfo { index, load: 0, connected: true }).collect(),
        })
        .collect();
    let report = opamp_gateway::policy::replay::replay(wasm, policy_config.as_deref(), &limits, &upstreams, captures)?;
    print!("{}", report.display(show));
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    if config.runtime.worker_threads == Some(1) {
        tracing::info!(
            "runtime.worker_threads is 1: a policy call runs on the only worker, so a slow policy \
             delays every agent for up to its time budget (docs/policies.md#containment)"
        );
    }
    let handle = telemetry::install_recorder_with(config.telemetry.metrics.naming)?;
    let gateway = Gateway::start(&config, Some(handle)).await?;
    // One machine-readable line on stdout: scripts and tests wait for it.
    let metrics = gateway.metrics_addr().map(|a| a.to_string()).unwrap_or_else(|| "-".into());
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    // The signal streams exist before the ready line: a signal that comes
    // before its stream takes its default action, and SIGTERM's and SIGHUP's
    // end the process (no drain) at once. A supervisor may signal the
    // moment it reads the line.
    let mut signals = Signals::install()?;
    println!("ready listener={} metrics={metrics} workers={workers}", gateway.listen_addr());
    std::io::stdout().flush().ok();
    serve_until_signal(&gateway, &mut signals).await;
    // `/readyz` is 503 from here; agents are still accepted for
    // `listener.drain_delay`, unless a second signal asks to hurry.
    gateway.shutdown_with(signals.stop()).await;
    Ok(())
}

/// The signals the gateway answers, subscribed once for its whole life: a
/// stream made later would miss a signal sent in between.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// The next SIGTERM or SIGINT (Ctrl-C).
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Runs until SIGTERM or Ctrl-C; SIGHUP reloads the policies folder now
/// (useful with `policies.watch: false`).
#[cfg(unix)]
async fn serve_until_signal(gateway: &Gateway, signals: &mut Signals) {
    loop {
        tokio::select! {
            _ = signals.term.recv() => { tracing::info!("SIGTERM received"); return }
            _ = signals.int.recv() => { tracing::info!("interrupt received"); return }
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP received: reloading policies");
                let status = tokio::task::block_in_place(|| gateway.policies().reload());
                tracing::info!(generation = status.generation, outcome = ?status.outcome, "policy reload");
            }
        }
    }
}

/// Ctrl-C or Ctrl-Break, the console closing, or the system shutting down
/// (what a service wrapper or the OS sends). Windows has no SIGHUP:
/// policies reload through `policies.watch`.
#[cfg(windows)]
struct Signals {
    c: tokio::signal::windows::CtrlC,
    brk: tokio::signal::windows::CtrlBreak,
    close: tokio::signal::windows::CtrlClose,
    shutdown: tokio::signal::windows::CtrlShutdown,
}

#[cfg(windows)]
impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_shutdown};
        Ok(Self {
            c: ctrl_c().context("installing the Ctrl-C handler")?,
            brk: ctrl_break().context("installing the Ctrl-Break handler")?,
            close: ctrl_close().context("installing the console-close handler")?,
            shutdown: ctrl_shutdown().context("installing the shutdown handler")?,
        })
    }

    /// The next of them, by name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.c.recv() => "Ctrl-C",
            _ = self.brk.recv() => "Ctrl-Break",
            _ = self.close.recv() => "console close",
            _ = self.shutdown.recv() => "system shutdown",
        }
    }

    async fn stop(&mut self) {
        self.next().await;
    }
}

#[cfg(windows)]
async fn serve_until_signal(_gateway: &Gateway, signals: &mut Signals) {
    let what = signals.next().await;
    tracing::info!("{what} received");
}
