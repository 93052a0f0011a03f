//! Fan-in, least-connections assignment, routing by uid, capability replay.

use bytes::Bytes;
use opamp_gateway::protocol::proto::ServerToAgent;
use opamp_gateway::protocol::InstanceUid;
use opamp_gateway::sim::agent::SimAgent;
use opamp_gateway::sim::server::ReferenceServerConfig;
use opamp_gateway::Gateway;

use crate::common::{config, heartbeat, round_trip, Harness, T};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_agents_three_links_exact_routing() {
    let h = Harness::start().await;
    let mut agents = Vec::new();
    for k in 1..=30u32 {
        agents.push(h.agent().await);
        let loads = h.loads();
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert_eq!(loads.iter().sum::<u32>(), k);
        assert!(max - min <= 1, "agent {k} did not go to the least-loaded link: {loads:?}");
    }
    assert_eq!(h.loads(), vec![10, 10, 10]);

    let state = h.server.state();
    assert_eq!(state.open_connections, 3, "the server sees the pool, not the agents");
    let mut ids: Vec<_> =
        state.connections.iter().filter_map(|c| c.header("X-Opamp-Gateway-Connection-Id").map(str::to_owned)).collect();
    ids.sort();
    assert_eq!(ids, ["upstream-0", "upstream-1", "upstream-2"]);

    // Unsolicited pushes reach exactly their agent: after its own push, an
    // agent's next message is the reply to its own heartbeat, not a stray.
    for a in &agents {
        let push = ServerToAgent { flags: 1, ..Default::default() };
        assert!(h.server.push(a.uid().as_bytes(), push));
    }
    for a in &mut agents {
        let got = a.recv(T).await.unwrap();
        assert_eq!(&got.instance_uid, a.uid().as_bytes());
        assert_eq!(got.flags, 1, "expected the push");
        heartbeat(a).await;
        let reply = a.recv(T).await.unwrap();
        assert_eq!(&reply.instance_uid, a.uid().as_bytes());
        assert_eq!(reply.flags, 0, "a second push arrived for {}", a.uid());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_ulid_uids_and_headerless_frames() {
    let h = Harness::start().await;
    let ulid = InstanceUid::parse(Some(Bytes::from_static(b"01HZX3NDEKTSV4RRFFQ69G5FAV"))).unwrap();
    let mut opts = h.agent_options();
    opts.uid = ulid.clone();
    opts.legacy_frames = true;
    let mut legacy = h.agent_with(opts).await;
    assert!(h.server.push(ulid.as_bytes(), ServerToAgent { flags: 1, ..Default::default() }));
    assert_eq!(legacy.recv(T).await.unwrap().flags, 1);
    let record = h.server.state().agent(ulid.as_bytes()).cloned().expect("server knows the ULID agent");
    assert_eq!(record.messages, 1);
    round_trip(&mut legacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_capabilities_replayed_once_per_agent() {
    let caps = vec!["io.example.one".to_owned(), "io.example.two".to_owned()];
    let h = Harness::with(ReferenceServerConfig { custom_capabilities: caps.clone(), ..Default::default() }, |c| {
        c.server.connections = 1
    })
    .await;
    // The server sent its capabilities once on the link (with the first
    // connectResult); each agent must still get them in its first message.
    for _ in 0..3 {
        let mut a = h.agent().await; // first reply already consumed by the helper…
        heartbeat(&mut a).await; // …so look at the second: no capabilities again.
        assert_eq!(a.recv(T).await.unwrap().custom_capabilities, None);
    }
    let mut a = SimAgent::connect(h.agent_options()).await.unwrap();
    let report = a.status_report();
    a.send(report).await.unwrap();
    let first = a.recv(T).await.unwrap();
    assert_eq!(first.custom_capabilities.expect("replayed").capabilities, caps);

    // An agent the server addresses with its own capabilities gets those, once.
    let mut b = SimAgent::connect(h.agent_options()).await.unwrap();
    heartbeat(&mut b).await;
    let first = b.recv(T).await.unwrap();
    assert!(first.custom_capabilities.is_some());
    let own = opamp_gateway::protocol::proto::CustomCapabilities { capabilities: vec!["io.example.own".into()] };
    h.server.push(b.uid().as_bytes(), ServerToAgent { custom_capabilities: Some(own.clone()), ..Default::default() });
    assert_eq!(b.recv(T).await.unwrap().custom_capabilities, Some(own));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_agents_concurrent_round_trips() {
    let h = Harness::start().await;
    let url = h.gateway.agent_url();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut a = SimAgent::connect(opamp_gateway::sim::agent::AgentOptions::new(url)).await.unwrap();
                for _ in 0..20 {
                    round_trip(&mut a).await;
                }
                a
            })
        })
        .collect();
    let mut agents = Vec::new();
    for t in tasks {
        agents.push(t.await.unwrap());
    }
    let state = h.server.state();
    for a in &agents {
        assert_eq!(state.agent(a.uid().as_bytes()).unwrap().messages, 20);
    }
    assert_eq!(h.loads().iter().sum::<u32>(), 50);
    drop(agents);
    let relay = h.gateway.inspect();
    crate::common::eventually("loads return to zero", || relay.loads().iter().sum::<u32>() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_shutdown() {
    let h = Harness::start().await;
    let cfg = {
        let mut c = config(&h.server.url());
        c.listener.endpoint = h.gateway.listen_addr().to_string();
        c
    };
    let mut a = h.agent().await;
    h.gateway.shutdown().await;
    assert_eq!(a.recv_close(T).await.unwrap().code, Some(1001));
    // Same port, new gateway: agents reconnect and flow again.
    let g2 = Gateway::start(&cfg, None).await.expect("restart on the same port");
    assert!(g2.wait_for_links(3, T).await);
    let mut b = SimAgent::connect(opamp_gateway::sim::agent::AgentOptions::new(g2.agent_url())).await.unwrap();
    round_trip(&mut b).await;
    g2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_assigned_uid_routes_before_first_use() {
    use opamp_gateway::protocol::proto::AgentIdentification;
    let h = Harness::start().await;
    let mut a = h.agent().await;
    let new_uid = Bytes::from_static(&[0xAB; 16]);
    let assign = ServerToAgent {
        agent_identification: Some(AgentIdentification { new_instance_uid: new_uid.clone() }),
        ..Default::default()
    };
    assert!(h.server.push(a.uid().as_bytes(), assign));
    assert_eq!(a.recv(T).await.unwrap().agent_identification.unwrap().new_instance_uid, new_uid);
    // The server may address the new uid before the agent has used it.
    h.server.push_raw(
        h.server.state().agent(a.uid().as_bytes()).unwrap().conn_id,
        opamp_gateway::protocol::framing::encode(&ServerToAgent {
            instance_uid: new_uid.clone(),
            flags: 1,
            ..Default::default()
        }),
    );
    let got = a.recv(T).await.unwrap();
    assert_eq!((got.instance_uid, got.flags), (new_uid.clone(), 1));
    drop(a);
    let relay = h.gateway.inspect();
    crate::common::eventually("the alias is released with the agent", || !relay.is_routed(&new_uid)).await;
}
