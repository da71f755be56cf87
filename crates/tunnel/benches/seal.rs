//! Sealing and opening tunnel payloads: one TCP chunk (64 KiB, the largest read
//! from a local socket) and one media-sized UDP datagram (1316 bytes, 7 TS packets).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fleetgate_tunnel::crypto::TunnelCipher;

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn bench(c: &mut Criterion) {
    let cipher = TunnelCipher::from_hex(KEY).expect("key");
    let mut group = c.benchmark_group("tunnel_seal");
    for size in [1316usize, 64 * 1024] {
        let plain = vec![0x47u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        let mut out = Vec::with_capacity(size + 64);
        group.bench_function(format!("seal_{size}"), |b| {
            b.iter(|| {
                out.clear();
                cipher.seal_into(black_box(&plain), &mut out).expect("seal");
            })
        });
        let sealed = cipher.seal(&plain).expect("seal");
        let mut scratch = sealed.clone();
        group.bench_function(format!("open_{size}"), |b| {
            b.iter(|| {
                scratch.copy_from_slice(&sealed);
                black_box(cipher.open_in_place(&mut scratch).expect("open").len());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
