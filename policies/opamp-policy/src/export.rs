//! How [`export_policy!`](crate::export_policy) finds the hooks a type
//! implements: at compile time, from the concrete type the macro is given.
//!
//! `Probe<P>` has one inherent associated const per hook, each in an impl
//! bounded by that hook's trait (`impl<P: Assign> Probe<P>`), and the trait
//! [`Unimplemented`] gives every one of them a `None` default. A path such as
//! `<Probe<MyPolicy>>::ASSIGN` resolves to the inherent const when its bound
//! holds and to the trait's otherwise. That choice needs a concrete type, so
//! it is made in the macro's expansion, never inside a generic function.

use std::sync::OnceLock;

use crate::{Admit, Assign, Filter, ForwardHeaders, Lifecycle};
use crate::{
    AdmitVerdict, AssignInput, Direction, Directions, Headers, Hooks, Message, Policy, Route, SessionEvent, Verdict,
};

pub type AssignFn<P> = fn(&P, &AssignInput) -> Option<Route>;
pub type ForwardHeadersFn<P> = fn(&P, Headers) -> Headers;
pub type FilterFn<P> = fn(&P, Direction, &[u8], &Message) -> Verdict;
pub type AdmitFn<P> = fn(&P, &AssignInput) -> AdmitVerdict;
pub type LifecycleFns<P> = (fn(&P, &SessionEvent), fn(&P, &SessionEvent, &str));

/// The hook implementations of one policy type: `None` where it does not
/// implement the hook's trait.
pub struct Implemented<P> {
    pub assign: Option<AssignFn<P>>,
    pub forward_headers: Option<ForwardHeadersFn<P>>,
    pub filter: Option<(Directions, FilterFn<P>)>,
    pub admit: Option<AdmitFn<P>>,
    pub lifecycle: Option<LifecycleFns<P>>,
}

impl<P> Implemented<P> {
    /// What `init` announces.
    pub const fn hooks(&self) -> Hooks {
        let mut hooks = Hooks::empty();
        if self.assign.is_some() {
            hooks = hooks.union(Hooks::ASSIGN);
        }
        if self.forward_headers.is_some() {
            hooks = hooks.union(Hooks::FORWARD_HEADERS);
        }
        if let Some((directions, _)) = &self.filter {
            hooks = hooks.union(directions.hooks());
        }
        if self.admit.is_some() {
            hooks = hooks.union(Hooks::ADMIT);
        }
        if self.lifecycle.is_some() {
            hooks = hooks.union(Hooks::LIFECYCLE);
        }
        hooks
    }
}

pub struct Probe<P>(std::marker::PhantomData<P>);

/// The fallback for a hook whose trait the type does not implement.
pub trait Unimplemented<P> {
    const ASSIGN: Option<AssignFn<P>> = None;
    const FORWARD_HEADERS: Option<ForwardHeadersFn<P>> = None;
    const FILTER: Option<(Directions, FilterFn<P>)> = None;
    const ADMIT: Option<AdmitFn<P>> = None;
    const LIFECYCLE: Option<LifecycleFns<P>> = None;
}

impl<P> Unimplemented<P> for Probe<P> {}

impl<P: Assign> Probe<P> {
    pub const ASSIGN: Option<AssignFn<P>> = Some(<P as Assign>::assign);
}

impl<P: ForwardHeaders> Probe<P> {
    pub const FORWARD_HEADERS: Option<ForwardHeadersFn<P>> = Some(<P as ForwardHeaders>::forward_headers);
}

impl<P: Filter> Probe<P> {
    pub const FILTER: Option<(Directions, FilterFn<P>)> = Some((P::DIRECTIONS, <P as Filter>::filter));
}

impl<P: Admit> Probe<P> {
    pub const ADMIT: Option<AdmitFn<P>> = Some(<P as Admit>::admit);
}

impl<P: Lifecycle> Probe<P> {
    pub const LIFECYCLE: Option<LifecycleFns<P>> =
        Some((<P as Lifecycle>::on_connect, <P as Lifecycle>::on_disconnect));
}

/// The exported policy: the instance's value once `init` built it, and the
/// hooks its type implements.
pub struct Exported<P> {
    policy: OnceLock<P>,
    hooks: Implemented<P>,
}

impl<P: Policy> Exported<P> {
    pub const fn new(hooks: Implemented<P>) -> Self {
        Self { policy: OnceLock::new(), hooks }
    }

    pub fn init(&self, config: &str) -> Result<Hooks, String> {
        // Panic messages go to the gateway's log through `host.log`, not to
        // WASI stderr: the gateway grants no stdio, and the message is more
        // useful next to the policy's name than in a discarded stream.
        #[cfg(target_arch = "wasm32")]
        std::panic::set_hook(Box::new(|info| crate::log::log(crate::log::Level::Error, &format!("panic: {info}"))));
        let policy = P::new(config)?;
        self.policy.set(policy).map_err(|_| "init called twice".to_owned())?;
        Ok(self.hooks.hooks())
    }

    // The gateway calls only the hooks `init` announced, after `init`; the
    // pass-through answers below are for a host that does not.

    pub fn assign(&self, input: &AssignInput) -> Option<Route> {
        (self.hooks.assign?)(self.policy.get()?, input)
    }

    pub fn forward_headers(&self, headers: Headers) -> Headers {
        match (self.hooks.forward_headers, self.policy.get()) {
            (Some(hook), Some(policy)) => hook(policy, headers),
            _ => headers,
        }
    }

    pub fn filter(&self, direction: Direction, uid: &[u8], message: &Message) -> Verdict {
        match (&self.hooks.filter, self.policy.get()) {
            (Some((_, hook)), Some(policy)) => hook(policy, direction, uid, message),
            _ => Verdict::Forward,
        }
    }

    pub fn admit(&self, input: &AssignInput) -> AdmitVerdict {
        match (self.hooks.admit, self.policy.get()) {
            (Some(hook), Some(policy)) => hook(policy, input),
            _ => AdmitVerdict::Allow,
        }
    }

    pub fn on_connect(&self, event: &SessionEvent) {
        if let (Some((hook, _)), Some(policy)) = (self.hooks.lifecycle, self.policy.get()) {
            hook(policy, event)
        }
    }

    pub fn on_disconnect(&self, event: &SessionEvent, reason: &str) {
        if let (Some((_, hook)), Some(policy)) = (self.hooks.lifecycle, self.policy.get()) {
            hook(policy, event, reason)
        }
    }
}

/// The [`Implemented`] hooks of a concrete policy type.
#[doc(hidden)]
#[macro_export]
macro_rules! __implemented {
    ($policy:ty) => {{
        #[allow(unused_imports)]
        use $crate::__export::Unimplemented as _;
        $crate::__export::Implemented::<$policy> {
            assign: <$crate::__export::Probe<$policy>>::ASSIGN,
            forward_headers: <$crate::__export::Probe<$policy>>::FORWARD_HEADERS,
            filter: <$crate::__export::Probe<$policy>>::FILTER,
            admit: <$crate::__export::Probe<$policy>>::ADMIT,
            lifecycle: <$crate::__export::Probe<$policy>>::LIFECYCLE,
        }
    }};
}

/// The [`Hooks`] that [`export_policy!`](crate::export_policy) announces for
/// a policy type, as a constant: assert it in a unit test.
///
/// ```
/// use opamp_policy::{hooks_of, Hooks, Policy, ForwardHeaders, Headers};
///
/// struct Strip;
/// impl Policy for Strip {
///     fn new(_config: &str) -> Result<Self, String> { Ok(Strip) }
/// }
/// impl ForwardHeaders for Strip {
///     fn forward_headers(&self, headers: Headers) -> Headers { headers }
/// }
/// assert_eq!(hooks_of!(Strip), Hooks::FORWARD_HEADERS);
/// ```
#[macro_export]
macro_rules! hooks_of {
    ($policy:ty) => {
        $crate::__implemented!($policy).hooks()
    };
}

/// Exports a policy type as the component's `policy` interface. Use it once,
/// at the crate root.
///
/// `init` announces exactly the hooks whose traits ([`Admit`], [`Assign`],
/// [`ForwardHeaders`], [`Filter`] with its [`Filter::DIRECTIONS`],
/// [`Lifecycle`]) the type implements. A type that implements none of them does not compile:
///
/// ```compile_fail
/// struct Idle;
/// impl opamp_policy::Policy for Idle {
///     fn new(_config: &str) -> Result<Self, String> { Ok(Idle) }
/// }
/// opamp_policy::export_policy!(Idle); // error: implements no hook
/// ```
///
/// On non-wasm targets only that check remains, so a policy crate can also
/// be an `rlib` whose logic is unit-tested on the host with `cargo test`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: () = ::std::assert!(
            !$crate::hooks_of!($policy).is_empty(),
            "export_policy!: this type implements no hook; implement at least one of \
             opamp_policy::Admit, opamp_policy::Assign, opamp_policy::ForwardHeaders, \
             opamp_policy::Filter and opamp_policy::Lifecycle"
        );

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        pub struct __OpampPolicyExport;

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        static __OPAMP_POLICY: $crate::__export::Exported<$policy> =
            $crate::__export::Exported::new($crate::__implemented!($policy));

        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::opamp_gateway::policy::policy::Guest for __OpampPolicyExport {
            fn init(config: ::std::string::String) -> ::std::result::Result<$crate::Hooks, ::std::string::String> {
                __OPAMP_POLICY.init(&config)
            }

            fn assign(input: $crate::AssignInput) -> ::std::option::Option<$crate::Route> {
                __OPAMP_POLICY.assign(&input)
            }

            fn forward_headers(headers: $crate::Headers) -> $crate::Headers {
                __OPAMP_POLICY.forward_headers(headers)
            }

            fn filter(
                direction: $crate::Direction,
                uid: ::std::vec::Vec<u8>,
                message: &$crate::Message,
            ) -> $crate::Verdict {
                __OPAMP_POLICY.filter(direction, &uid, message)
            }

            fn admit(input: $crate::AssignInput) -> $crate::AdmitVerdict {
                __OPAMP_POLICY.admit(&input)
            }

            fn on_connect(event: $crate::SessionEvent) {
                __OPAMP_POLICY.on_connect(&event)
            }

            fn on_disconnect(event: $crate::SessionEvent, reason: ::std::string::String) {
                __OPAMP_POLICY.on_disconnect(&event, &reason)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_gateway_policy!(__OpampPolicyExport with_types_in $crate::bindings);
    };
}

// The host-side `Message` exists off wasm only.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::proto::{AgentToServer, ServerToAgent};
    use crate::{Transport, FILTER_BOTH};

    /// Answers every hook it implements with something a pass-through would
    /// not, so a test sees which path ran.
    struct Router;
    impl Policy for Router {
        fn new(config: &str) -> Result<Self, String> {
            if config == "fail" {
                return Err("asked to fail".into());
            }
            Ok(Router)
        }
    }
    impl Assign for Router {
        fn assign(&self, _input: &AssignInput) -> Option<Route> {
            Some(Route::upstream("green").with_link(7))
        }
    }

    struct Both;
    impl Policy for Both {
        fn new(_config: &str) -> Result<Self, String> {
            Ok(Both)
        }
    }
    impl ForwardHeaders for Both {
        fn forward_headers(&self, _headers: Headers) -> Headers {
            vec![("x-seen".into(), "1".into())]
        }
    }
    impl Filter for Both {
        fn filter(&self, _direction: Direction, _uid: &[u8], _message: &Message) -> Verdict {
            Verdict::Drop
        }
    }

    struct Upward;
    impl Policy for Upward {
        fn new(_config: &str) -> Result<Self, String> {
            Ok(Upward)
        }
    }
    impl Filter for Upward {
        const DIRECTIONS: Directions = Directions::AgentToServer;
        fn filter(&self, _direction: Direction, _uid: &[u8], _message: &Message) -> Verdict {
            Verdict::Close
        }
    }

    /// Implements `Policy` and nothing else.
    struct Idle;
    impl Policy for Idle {
        fn new(_config: &str) -> Result<Self, String> {
            Ok(Idle)
        }
    }

    fn input() -> AssignInput {
        AssignInput {
            headers: vec![],
            remote_address: "127.0.0.1:1".into(),
            transport: Transport::Http,
            upstreams: vec![],
        }
    }

    fn message() -> Message {
        Message::from_proto(&AgentToServer { instance_uid: vec![1; 16], ..Default::default() })
    }

    #[test]
    fn the_announced_hooks_are_the_implemented_traits() {
        assert_eq!(hooks_of!(Router), Hooks::ASSIGN);
        assert_eq!(hooks_of!(Both), Hooks::FORWARD_HEADERS | FILTER_BOTH, "filter defaults to both directions");
        assert_eq!(hooks_of!(Upward), Hooks::FILTER_AGENT_TO_SERVER);
        assert_eq!(hooks_of!(Idle), Hooks::empty(), "export_policy! refuses this type at compile time");
        // Usable where a constant is needed, as export_policy!'s check is.
        const ROUTER: Hooks = hooks_of!(Router);
        assert_eq!(ROUTER, Hooks::ASSIGN);
    }

    #[test]
    fn init_announces_them_and_the_hooks_call_the_traits() {
        let router = Exported::new(crate::__implemented!(Router));
        assert_eq!(router.init(""), Ok(Hooks::ASSIGN));
        assert_eq!(router.assign(&input()), Some(Route::upstream("green").with_link(7)));
        // Hooks it does not implement pass through.
        let headers = vec![("a".to_owned(), "b".to_owned())];
        assert_eq!(router.forward_headers(headers.clone()), headers);
        assert_eq!(router.filter(Direction::AgentToServer, &[1; 16], &message()), Verdict::Forward);
        assert_eq!(router.init(""), Err("init called twice".to_owned()));

        let both = Exported::new(crate::__implemented!(Both));
        assert_eq!(both.init(""), Ok(Hooks::FORWARD_HEADERS | FILTER_BOTH));
        assert_eq!(both.assign(&input()), None);
        assert_eq!(both.forward_headers(headers), vec![("x-seen".to_owned(), "1".to_owned())]);
        let down = Message::from_proto(&ServerToAgent { instance_uid: vec![1; 16], ..Default::default() });
        assert_eq!(both.filter(Direction::ServerToAgent, &[1; 16], &down), Verdict::Drop);

        let upward = Exported::new(crate::__implemented!(Upward));
        assert_eq!(upward.init(""), Ok(Hooks::FILTER_AGENT_TO_SERVER));
        assert_eq!(upward.filter(Direction::AgentToServer, &[1; 16], &message()), Verdict::Close);
    }

    #[test]
    fn a_refused_config_is_the_init_error_and_no_hook_runs() {
        let router = Exported::new(crate::__implemented!(Router));
        assert_eq!(router.init("fail"), Err("asked to fail".to_owned()));
        assert_eq!(router.assign(&input()), None, "no value was built");
    }
}
