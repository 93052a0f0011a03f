//! Helpers over the `assign` types, mirroring the gateway's own: build a
//! [`Route`] in one call, and find what you need in an [`AssignInput`].
//!
//! ```
//! use opamp_policy::{AssignInput, Route};
//!
//! fn choose(input: &AssignInput) -> Option<Route> {
//!     // Green when it has a connected link, else no opinion (the default).
//!     let green = input.upstream("green")?;
//!     green.links.iter().any(|l| l.connected).then(|| Route::upstream("green"))
//! }
//! ```

use crate::{AssignInput, Link, Route, Upstream};

/// The name of the upstream configured under `server:` in the gateway
/// config: always the first of [`AssignInput::upstreams`].
pub const DEFAULT_UPSTREAM: &str = "default";

impl Route {
    /// Link `index` of the default upstream.
    pub fn default_link(index: u32) -> Self {
        Self { upstream: DEFAULT_UPSTREAM.to_owned(), link: Some(index) }
    }

    /// The upstream named `name`; the gateway picks its least-loaded
    /// connected link.
    pub fn upstream(name: impl Into<String>) -> Self {
        Self { upstream: name.into(), link: None }
    }

    /// The same upstream, link `index` of it.
    pub fn with_link(self, index: u32) -> Self {
        Self { link: Some(index), ..self }
    }
}

impl AssignInput {
    /// The default upstream's links (what an `assign` built against WIT
    /// 0.2.0 saw as `links`).
    pub fn links(&self) -> &[Link] {
        self.upstreams.first().map_or(&[], |u| &u.links)
    }

    /// The upstream named `name`, if the gateway has one.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

impl Upstream {
    /// Whether at least one of its links is up.
    pub fn connected(&self) -> bool {
        self.links.iter().any(|l| l.connected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Transport;

    #[test]
    fn helpers_find_and_build() {
        let link = |index, connected| Link { index, load: 0, connected };
        let input = AssignInput {
            headers: vec![],
            remote_address: "10.0.0.1:1".into(),
            transport: Transport::Websocket,
            upstreams: vec![
                Upstream { name: DEFAULT_UPSTREAM.into(), links: vec![link(0, true), link(1, false)] },
                Upstream { name: "green".into(), links: vec![link(0, false)] },
            ],
        };
        assert_eq!(input.links().len(), 2);
        assert!(input.upstream("default").unwrap().connected());
        assert!(!input.upstream("green").unwrap().connected());
        assert!(input.upstream("blue").is_none());
        assert_eq!(Route::default_link(1), Route { upstream: "default".into(), link: Some(1) });
        assert_eq!(Route::upstream("green").with_link(0), Route { upstream: "green".into(), link: Some(0) });
        assert_eq!(Route::upstream("green").link, None);
        let none = AssignInput { upstreams: vec![], ..input };
        assert!(none.links().is_empty());
    }
}
