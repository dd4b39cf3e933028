//! `cargo bench --bench protocols`: how many bytes per second each protocol state machine turns
//! into replies, with no socket involved — the ceiling the I/O layer works under.
//!
//! Inputs are fed in 64 KiB pieces (the reactor's read size) and in 64-byte pieces (one small
//! request per read, the ping-pong case, where per-call overhead dominates).

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use oneloop::clock::Now;
use oneloop::protocol::{Arrival, Limits, Session};
use oneloop::service::ProtocolKind;

const INPUT_BYTES: usize = 1 << 20;

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let ascii: Vec<u8> = b"the quick brown fox jumps over the lazy dog 0123456789\n"
        .iter()
        .copied()
        .cycle()
        .take(INPUT_BYTES)
        .collect();
    let mixed: Vec<u8> = "straße, 你好, ﬁx, hello world\n"
        .bytes()
        .cycle()
        .take(INPUT_BYTES)
        .collect();
    vec![("ascii", ascii), ("mixed-utf8", mixed)]
}

fn protocols(c: &mut Criterion) {
    let now = Now::with_ctime(Instant::now(), "Wed Sep  9 16:42:46 2026");
    let mut group = c.benchmark_group("protocol");
    group.throughput(Throughput::Bytes(INPUT_BYTES as u64));
    for kind in [
        ProtocolKind::Echo,
        ProtocolKind::Upper,
        ProtocolKind::Timestamp,
    ] {
        for (input_name, input) in inputs() {
            for piece in [64usize, 64 * 1024] {
                let id = BenchmarkId::new(kind.name(), format!("{input_name}/{piece}B-reads"));
                group.bench_with_input(id, &input, |b, input| {
                    let mut out = Vec::with_capacity(input.len() * 2);
                    b.iter(|| {
                        let mut session = Session::new(kind, Limits::default()).unwrap();
                        out.clear();
                        for chunk in input.chunks(piece) {
                            let _ = session.on_input(chunk, Arrival::Drained, &now, &mut out);
                        }
                        session.on_end(&now, &mut out);
                        black_box(out.len())
                    });
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, protocols);
criterion_main!(benches);
