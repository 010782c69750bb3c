//! Hostile clients over real sockets: the broker stays up, other clients lose nothing, and
//! memory returns to its baseline.

mod common;
use common::*;
use serde_json::json;

/// A well-behaved client that must see every broadcast while the others misbehave.
async fn bystander_gets(ws: &mut Client, publ: &mut Client, n: usize) {
    for i in 0..n {
        let ev = json!({"eventType": 6, "files": [], "i": i});
        send_json(publ, &ev).await;
        assert_eq!(recv_json(ws).await, ev);
    }
}

#[tokio::test]
async fn fragmented_messages_are_reassembled() {
    let b = start().await;
    let mut s = raw_upgrade(b.ws_addr(), "").await;
    let msg = br#"{"eventType":10,"message":"in three parts"}"#;
    raw_send(&mut s, 0x01, &msg[..10], true).await; // text, not final
    raw_send(&mut s, 0x89, b"ping in between", true).await; // a control frame may interleave
    raw_send(&mut s, 0x00, &msg[10..20], true).await; // continuation
    raw_send(&mut s, 0x80, &msg[20..], true).await; // final continuation
    raw_send(&mut s, 0x88, &1000u16.to_be_bytes(), true).await;
    let mut texts = Vec::new();
    assert_eq!(raw_read_until_close(&mut s, &mut texts).await, 1000);
    assert_eq!(texts, vec![String::from_utf8_lossy(msg).into_owned()]);
    b.shutdown().await;
}

#[tokio::test]
async fn protocol_violations_close_with_1002_and_hurt_no_one() {
    let b = start().await;
    let mut ws = client(b.ws_addr()).await;
    let mut publ = publisher(b.ws_addr()).await;
    let cases: [(&str, u8, bool); 4] = [
        ("unmasked client frame", 0x81, false),
        (
            "compressed frame (RSV1) without an agreed extension",
            0xC1,
            true,
        ),
        ("reserved opcode", 0x83, true),
        ("continuation with nothing to continue", 0x80, true),
    ];
    for (what, first, masked) in cases {
        // Asking for permessage-deflate is answered without it (checked in raw_upgrade).
        let mut s = raw_upgrade(
            b.ws_addr(),
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        )
        .await;
        raw_send(&mut s, first, br#"{"eventType":10,"message":"x"}"#, masked).await;
        assert_eq!(raw_close_code(&mut s).await, 1002, "{what}");
        bystander_gets(&mut ws, &mut publ, 1).await;
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_does_not_slow_the_others() {
    let b = start().await;
    let mut ws = client(b.ws_addr()).await;
    let mut publ = publisher(b.ws_addr()).await;
    let mut flood = raw_upgrade(b.ws_addr(), "").await;
    let flooding = tokio::spawn(async move {
        // Never reads its pongs: the broker must not buffer them without bound either.
        for _ in 0..20_000 {
            raw_send(&mut flood, 0x89, b"0123456789", true).await;
        }
        flood
    });
    bystander_gets(&mut ws, &mut publ, 200).await;
    let _flood = flooding.await.expect("flood task");
    bystander_gets(&mut ws, &mut publ, 10).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connect_disconnect_cycles_leave_no_trace() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open files limit");
    // The broker runs as its own process so that its RSS is not mixed with the clients' or
    // with the other tests of this file.
    // 1,000 handshakes at once from one address: more than the per-address bound on pending
    // handshakes, which this test is not about.
    let b = BrokerProcess::spawn(&[
        ("BROKER_SOCKET_API_KEY", API_KEY),
        ("BROKER_MAX_PENDING_HANDSHAKES_PER_ADDRESS", "0"),
    ]);
    let mut ws = client(b.ws).await;
    let mut publ = publisher(b.ws).await;
    let addr = b.ws;
    // `n` cycles, 100 at a time: what the broker holds at a peak of concurrent handshakes is
    // allocator slack, not a leak, and a peak that depends on how loaded the machine is made
    // this test flaky (1,000 at a time left 8.7 MiB of slack once under CI's load).
    let cycle = |n: usize| async move {
        for batch in 0..n.div_ceil(100) {
            cycle_batch(addr, batch * 100..(batch * 100 + 100).min(n)).await;
        }
    };
    async fn cycle_batch(addr: std::net::SocketAddr, range: std::ops::Range<usize>) {
        let tasks = range.map(|i| {
            tokio::spawn(async move {
                match i % 4 {
                    // A full client that says hello and leaves.
                    0 => {
                        let mut c = client(addr).await;
                        send_json(&mut c, &json!({"eventType": 10, "message": "hi"})).await;
                        recv_json(&mut c).await;
                    }
                    // A socket that connects and drops at once.
                    1 => drop(tokio::net::TcpStream::connect(addr).await),
                    // Half a request head, then gone.
                    2 => {
                        use tokio::io::AsyncWriteExt;
                        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                            let _ = s.write_all(b"GET / HTTP/1.1\r\nOrig").await;
                        }
                    }
                    // An upgrade that vanishes without a close frame.
                    _ => drop(raw_upgrade(addr, "").await),
                }
            })
        });
        for t in futures_util::future::join_all(tasks).await {
            t.expect("cycle task");
        }
    }
    cycle(1000).await; // warm-up: allocator pools, runtime workers
    let open = |b: &BrokerProcess| {
        let ops = b.ops;
        async move {
            let (_, m) = http_get(ops, "/metrics", None).await;
            metric(&m, r#"broker_connections_open{kind="client"}"#) == 1.0
        }
    };
    eventually("warm-up connections gone", || open(&b)).await;
    let baseline = b.rss_kib();
    for _ in 0..4 {
        cycle(1000).await;
        bystander_gets(&mut ws, &mut publ, 5).await;
    }
    eventually("all cycle connections gone", || open(&b)).await;
    // 4,000 leaked connections of even 2 KiB each would pass 8 MiB, for good. What the
    // allocator holds after a burst that overlapped more (a loaded machine) is handed back
    // within a few of the broker's 5 s looks (`memory::trim_after_spikes`), so the bound is
    // waited for, within 20 s.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut after = b.rss_kib();
    while after >= baseline + 8 * 1024 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        after = b.rss_kib();
    }
    eprintln!("broker RSS: {baseline} KiB after warm-up, {after} KiB after 4,000 more cycles");
    assert!(
        after < baseline + 8 * 1024,
        "broker RSS grew from {baseline} KiB to {after} KiB over 4,000 cycles, and stayed there for 20 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_handed_back_after_a_spike_of_connections_leaves() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open files limit");
    let b = BrokerProcess::spawn(&[("BROKER_MAX_PENDING_HANDSHAKES_PER_ADDRESS", "0")]);
    let baseline = b.rss_kib();
    // 6,000 idle connections: about 22 MB in this debug build (an idle connection costs
    // ~3.5 KiB; 3,000 were enough when it cost 8).
    let mut spike = Vec::new();
    for _ in 0..6000 {
        spike.push(raw_upgrade(b.ws, "").await);
    }
    let during = b.rss_kib();
    assert!(
        during > baseline + 16 * 1024,
        "the spike should cost memory: {baseline} -> {during} KiB"
    );
    drop(spike);
    let ops = b.ops;
    eventually("the spike's connections are gone", || async move {
        let (_, m) = http_get(ops, "/metrics", None).await;
        metric(&m, r#"broker_connections_open{kind="client"}"#) == 0.0
    })
    .await;
    // Within a minute (the broker looks every 5 s), back to within 8 MiB of the start.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = b.rss_kib();
        if now < baseline + 8 * 1024 {
            eprintln!(
                "broker RSS: {baseline} KiB, {during} KiB with 6,000 connections, {now} KiB after"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "RSS stayed at {now} KiB (started at {baseline}, {during} during the spike)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
