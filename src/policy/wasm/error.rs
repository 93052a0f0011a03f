//! [`PolicyError`]: why a policy (or the whole set) could not be loaded.

use std::path::{Path, PathBuf};

use super::bindings::WORLDS;

/// A policy that cannot be loaded. Every variant that concerns a file names
/// it, so the log line alone tells the operator what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The wasmtime engine or the watcher could not be set up.
    #[error("policy engine: {0}")]
    Engine(String),
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that is no policy module or config: a directory, a device,
    /// or over its size limit.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{}: policy names are made of letters, digits, '-', '_' and '.'", path.display())]
    Name { path: PathBuf },
    #[error("{}: invalid policy config: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
    #[error("{}: not a valid WebAssembly component: {reason}", path.display())]
    Compile { path: PathBuf, reason: String },
    #[error("{}: does not implement the policy world {WORLDS}: {reason}", path.display())]
    Interface { path: PathBuf, reason: String },
    #[error("{}: init failed: {reason}", path.display())]
    Init { path: PathBuf, reason: String },
    #[error("{}: cannot watch the policy directory: {reason}", path.display())]
    Watch { path: PathBuf, reason: String },
}

impl PolicyError {
    /// The file (or directory) the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PolicyError::Engine(_) => None,
            PolicyError::Io { path, .. }
            | PolicyError::Name { path }
            | PolicyError::File { path, .. }
            | PolicyError::Config { path, .. }
            | PolicyError::Compile { path, .. }
            | PolicyError::Interface { path, .. }
            | PolicyError::Init { path, .. }
            | PolicyError::Watch { path, .. } => Some(path),
        }
    }

    /// Short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyError::Engine(_) => "engine",
            PolicyError::Io { .. } => "io",
            PolicyError::Name { .. } => "name",
            PolicyError::File { .. } => "file",
            PolicyError::Config { .. } => "config",
            PolicyError::Compile { .. } => "compile",
            PolicyError::Interface { .. } => "interface",
            PolicyError::Init { .. } => "init",
            PolicyError::Watch { .. } => "watch",
        }
    }
}

/// Error text from wasmtime or wasmparser (which may pretty-print over
/// several lines) as one log-friendly line.
#[cfg_attr(not(feature = "wasm"), allow(dead_code))]
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_file_on_one_line() {
        assert_eq!(one_line("a [\n    0x0,\n] b"), "a [ 0x0, ] b");
        let e = PolicyError::Compile { path: "p/x.wasm".into(), reason: "bad magic".into() };
        assert_eq!(e.to_string(), "p/x.wasm: not a valid WebAssembly component: bad magic");
        assert_eq!(e.path(), Some(Path::new("p/x.wasm")));
        assert_eq!(e.kind(), "compile");
    }
}
