//! Criterion micro-benchmarks of the hub's hot paths, without sockets
//! (`switchboard::bench_support::BenchHub`: connection handles are bare bounded queues).
//!
//! - `register_unregister`: one connection in and out of a lobby of 1,000.
//! - `broadcast_enqueue/N`: one 100-byte broadcast published to N handles by the path
//!   production takes (`Hub::publish`: numbered, kept in the lobby's history, offered to each
//!   queue); the queues are drained between iterations, outside the measured time.
//! - `presence/N`: the lobby's presence list encoded as a `presence` frame.
//! - `deflate/compress|inflate/N`: one N-byte JSON chat message compressed as permessage-deflate
//!   sends it (per-thread compressor, reset per message), and inflated back (per-thread
//!   inflater): what a broadcast pays once, and what a compressed client message costs.
//!
//! Run: `cargo bench -p switchboard --bench hot_paths`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::bench_support::BenchHub;
use switchboard::ws::deflate;

fn register_unregister(c: &mut Criterion) {
    let mut hub = BenchHub::new(1_000, 256);
    c.bench_function("register_unregister/lobby_1000", |b| {
        b.iter(|| hub.register_unregister());
    });
}

fn broadcast_enqueue(c: &mut Criterion) {
    let frame = format!(
        r#"{{"type":"message","lobby":"bench","from":"u1","data":"{}"}}"#,
        "x".repeat(100)
    );
    let mut group = c.benchmark_group("broadcast_enqueue");
    for members in [1_000usize, 10_000] {
        let mut hub = BenchHub::new(members, 256);
        group.throughput(Throughput::Elements(members as u64));
        group.bench_function(BenchmarkId::from_parameter(members), |b| {
            // Draining is not measured: each iteration times one broadcast, then empties
            // every queue so the next one finds room.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    black_box(hub.broadcast(&frame));
                    total += start.elapsed();
                    hub.drain();
                }
                total
            });
        });
    }
    group.finish();
}

fn presence(c: &mut Criterion) {
    let mut group = c.benchmark_group("presence");
    for members in [1_000usize, 10_000] {
        let hub = BenchHub::new(members, 16);
        group.throughput(Throughput::Elements(members as u64));
        group.bench_function(BenchmarkId::from_parameter(members), |b| {
            b.iter(|| black_box(hub.presence()));
        });
    }
    group.finish();
}

/// A JSON chat frame of about `n` bytes.
fn chat(n: usize) -> Vec<u8> {
    let mut s =
        String::from(r#"{"type":"message","lobby":"lobby-1","from":"alice","data":{"lines":["#);
    let mut i = 0u64;
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"user":"user-{}","text":"message number {i} about the review at {}","at":{}}},"#,
            i % 37,
            i * 7 % 24,
            1_795_800_000_000 + i * 1234
        ));
        i += 1;
    }
    s.push_str(r#"{}]},"offset":42}"#);
    s.into_bytes()
}

fn deflate_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate");
    for size in [1024usize, 16 * 1024] {
        let payload = chat(size);
        let mut compressed = Vec::new();
        deflate::compress(&payload, 15, &mut compressed);
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_function(BenchmarkId::new("compress", size), |b| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                deflate::compress(black_box(&payload), 15, &mut out);
            });
        });
        group.bench_function(BenchmarkId::new("inflate", size), |b| {
            b.iter(|| deflate::with_inflated(black_box(&compressed), 1 << 20, |m| m.len()));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = register_unregister, broadcast_enqueue, presence, deflate_paths
}
criterion_main!(benches);
