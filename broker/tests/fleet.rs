//! The admin API across the fleet (PROTOCOL.md part 3): every instance answers for all of them
//! through a real `nats-server`, and one instance without NATS is a fleet of one.

mod common;

use std::time::Duration;

use admin_api::{FleetPage, Health, InstanceList, StatsHistory};
use broker::app::RunningBroker;
use common::nats::*;
use common::*;
use serde_json::{json, Value};

async fn call(b: &RunningBroker, method: &str, path: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, text) =
        http_request(b.ops_addr(), method, path, &[("authorization", &auth)], "").await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get<T: serde::de::DeserializeOwned>(b: &RunningBroker, path: &str) -> T {
    let (status, body) = call(b, "GET", path, ADMIN_TOKEN).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_value(body).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Waits up to `limit` for `cond`, polling; fails with `what`.
async fn within<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const READ_TOKEN: &str = "read-only-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_answers_for_the_whole_fleet() {
    let nats = Nats::start(free_port());
    let mut brokers = Vec::new();
    for name in ["fa", "fb"] {
        brokers.push(
            start_with(json!({"broker": {"instanceId": name, "drainWindow": 0.2,
                "admin": {"readToken": READ_TOKEN},
                "cluster": {"nats": nats.url(), "subject": "fleet"}}}))
            .await,
        );
    }
    let b = brokers.pop().expect("b");
    let a = brokers.pop().expect("a");
    let name_a: String = get::<admin_api::Stats>(&a, "/admin/v1/stats")
        .await
        .instance;
    let name_b: String = get::<admin_api::Stats>(&b, "/admin/v1/stats")
        .await
        .instance;

    // Both instances, up, listed by either (heartbeats every 2 s; a newcomer is answered at
    // once).
    for (me, name, other) in [(&a, &name_a, &name_b), (&b, &name_b, &name_a)] {
        within(
            Duration::from_secs(10),
            "each to list both instances",
            || async {
                let list: InstanceList = get(me, "/admin/v1/instances").await;
                list.clustered
                    && &list.answered_by == name
                    && list.instances.len() == 2
                    && list.instances.iter().all(|i| i.health == Health::Up)
                    && list.instances.iter().any(|i| &i.instance == other)
            },
        )
        .await;
    }

    let _on_a: Vec<Client> =
        futures_util::future::join_all((0..2).map(|_| client(a.ws_addr()))).await;
    let mut on_b: Vec<Client> =
        futures_util::future::join_all((0..3).map(|_| client(b.ws_addr()))).await;

    // Connections of both, with their instance, from either side.
    let page: FleetPage = get(&a, "/admin/v1/fleet/connections").await;
    assert_eq!(page.total, 5, "{page:?}");
    assert_eq!(page.answered, {
        let mut v = vec![name_a.clone(), name_b.clone()];
        v.sort();
        v
    });
    assert!(page.missing.is_empty());
    assert_eq!(
        page.connections
            .iter()
            .filter(|c| c.instance == name_b)
            .count(),
        3
    );
    assert!(page
        .connections
        .iter()
        .all(|c| admin_api::id_instance(&c.id) == c.instance));

    // Walking the cursor two at a time gives each connection once, in id order.
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let p: FleetPage = get(
            &b,
            &format!("/admin/v1/fleet/connections?limit=2&after={after}"),
        )
        .await;
        seen.extend(p.connections.iter().map(|c| c.id.clone()));
        match p.next {
            Some(next) => after = next,
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_by(|x, y| admin_api::id_key(x).cmp(&admin_api::id_key(y)));
    sorted.dedup();
    assert_eq!(seen, sorted, "in order, no repeats");
    assert_eq!(seen.len(), 5);

    // Search by address across the fleet.
    let by_addr: FleetPage = get(&a, "/admin/v1/fleet/connections?remote=127.0.0.1").await;
    assert_eq!(by_addr.total, 5);
    let none: FleetPage = get(&a, "/admin/v1/fleet/connections?remote=10.255.").await;
    assert_eq!(none.total, 0);
    // Search by id: an instance's part finds its connections, a whole id its one.
    let of_b: FleetPage = get(&a, &format!("/admin/v1/fleet/connections?id={name_b}.")).await;
    assert_eq!(of_b.total, 3);
    assert!(of_b.connections.iter().all(|c| c.instance == name_b));
    let one_id = of_b.connections[0].id.clone();
    let one: FleetPage = get(&a, &format!("/admin/v1/fleet/connections?id={one_id}")).await;
    assert_eq!(
        one.connections
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        [one_id.as_str()]
    );

    // A kick sent to A reaches a client on B.
    let target = page
        .connections
        .iter()
        .find(|c| c.instance == name_b)
        .expect("one on B")
        .id
        .clone();
    let (status, r) = call(
        &a,
        "DELETE",
        &format!("/admin/v1/connections/{target}?code=4001&reason=moved"),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(
        (status, r["kicked"].as_str()),
        (200, Some(target.as_str())),
        "{r}"
    );
    let mut kicked = None;
    for (i, ws) in on_b.iter_mut().enumerate() {
        if let Ok(code) = tokio::time::timeout(Duration::from_millis(500), close_code(ws)).await {
            kicked = Some((i, code));
            break;
        }
    }
    assert_eq!(
        kicked.map(|(_, c)| c),
        Some(4001),
        "one client of B was closed with 4001"
    );
    let (status, r) = call(
        &a,
        "DELETE",
        &format!("/admin/v1/connections/{name_b}.999999"),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 404, "{r}");
    let (status, _) = call(
        &a,
        "DELETE",
        "/admin/v1/connections/nowhere.aaaaaaaa.1",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 404);

    // B's recent stats, through A.
    within(Duration::from_secs(10), "B's history through A", || async {
        let h: StatsHistory = get(
            &a,
            &admin_api::instance_path(admin_api::route::INSTANCE_HISTORY, &name_b),
        )
        .await;
        h.instance == name_b && !h.samples.is_empty()
    })
    .await;

    // The read-only token lists the fleet and may not drain.
    let (status, _) = call(&a, "GET", "/admin/v1/instances", READ_TOKEN).await;
    assert_eq!(status, 200);
    let drain_b = admin_api::instance_path(admin_api::route::INSTANCE_DRAIN, &name_b);
    let (status, _) = call(&a, "POST", &drain_b, READ_TOKEN).await;
    assert_eq!(status, 403);
    assert!(b.shared().is_ready());

    // Drain B from A.
    let (status, r) = call(&a, "POST", &drain_b, ADMIN_TOKEN).await;
    assert_eq!((status, r["draining"].as_bool()), (202, Some(true)), "{r}");
    within(Duration::from_secs(10), "B to stop being ready", || async {
        !b.shared().is_ready()
    })
    .await;
    b.shutdown().await;

    // Gone: the next fleet list says B did not answer, then B goes silent.
    let page: FleetPage = get(&a, "/admin/v1/fleet/connections").await;
    assert_eq!(page.missing, vec![name_b.clone()], "{page:?}");
    assert_eq!(page.total, 2, "A's own are still listed");
    within(
        Duration::from_secs(15),
        "B to be listed as silent",
        || async {
            let list: InstanceList = get(&a, "/admin/v1/instances").await;
            list.instances
                .iter()
                .any(|i| i.instance == name_b && i.health == Health::Silent)
        },
    )
    .await;
    a.shutdown().await;
}

#[tokio::test]
async fn one_instance_without_nats_is_a_fleet_of_one() {
    let b = start().await;
    let _c = client(b.ws_addr()).await;
    let list: InstanceList = get(&b, "/admin/v1/instances").await;
    assert!(!list.clustered);
    assert_eq!(list.instances.len(), 1);
    assert_eq!(list.instances[0].stats.connections.clients, 1);
    let page: FleetPage = get(&b, "/admin/v1/fleet/connections").await;
    assert_eq!((page.total, page.connections.len()), (1, 1));
    assert_eq!(page.answered, vec![list.answered_by.clone()]);
    let (status, r) = call(
        &b,
        "POST",
        "/admin/v1/instances/other.aaaaaaaa/drain",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 404, "{r}");
    assert!(b.shared().is_ready());
    let (status, _) = call(&b, "POST", "/admin/v1/instances/a*b/drain", ADMIN_TOKEN).await;
    assert_eq!(status, 404);
    // The recent stats fill once a second.
    within(Duration::from_secs(10), "two samples", || async {
        get::<StatsHistory>(&b, "/admin/v1/stats/history")
            .await
            .samples
            .len()
            >= 2
    })
    .await;
    let h: StatsHistory = get(&b, "/admin/v1/stats/history").await;
    assert!(h.samples.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    assert_eq!(h.samples.last().map(|s| s.connections.clients), Some(1));
    b.shutdown().await;
}
