//! Ring benchmarks: building the partition table, owner lookup, and the
//! full-rebalance diff of 100k nodes when one of 100 conductors leaves.
//! `cargo bench -p ferric-common --bench ring`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ferric_common::ring::{Member, MemberState, Ring, RingSettings};

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            id: format!("conductor-{i:03}").into(),
            incarnation: format!("conductor-{i:03}/1").into(),
            grpc_url: String::new(),
            http_url: String::new(),
            conductor_group: String::new(),
            hardware_types: vec!["fake-hardware".into()],
            state: MemberState::Active,
            ring_settings: String::new(),
            database_id: String::new(),
        })
        .collect()
}

fn nodes(n: usize) -> Vec<[u8; 16]> {
    (0..n as u128).map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).to_le_bytes()).collect()
}

fn bench(c: &mut Criterion) {
    let ms = members(100);
    c.bench_function("build table, 100 conductors, 2^16 partitions", |b| {
        b.iter(|| {
            let ring = Ring::new(1, black_box(ms.clone()), RingSettings::default());
            black_box(ring.owner_of_partition(0, "", "fake-hardware").map(|m| m.id.as_str().len()))
        })
    });
    let ring = Ring::new(1, ms.clone(), RingSettings::default());
    let ns = nodes(100_000);
    let _ = ring.owner(&ns[0], "", "fake-hardware");
    let mut i = 0usize;
    c.bench_function("owner lookup (node uuid -> conductor)", |b| {
        b.iter(|| {
            i = (i + 1) % ns.len();
            black_box(ring.owner(&ns[i], "", "fake-hardware").map(|m| m.id.as_str().len()))
        })
    });
    let fewer = Ring::new(2, ms[1..].to_vec(), RingSettings::default());
    let _ = fewer.owner(&ns[0], "", "fake-hardware");
    c.bench_function("rebalance diff of 100k nodes (100 -> 99 conductors)", |b| {
        b.iter(|| {
            let moved = ns
                .iter()
                .filter(|u| {
                    ring.owner(u, "", "fake-hardware").map(|m| &m.id)
                        != fewer.owner(u, "", "fake-hardware").map(|m| &m.id)
                })
                .count();
            black_box(moved)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
