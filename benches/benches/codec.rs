//! Encode and decode of the two hottest frames, CRC included: a SEND with a 100-byte text body
//! and a PUSH of that message. Target (issue 3): 10 million frames per second per core for each.

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tern_protocol::*;

const TEXT: &[u8; 100] = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.";

fn send_frame() -> Frame<'static> {
    Frame::new(
        42,
        Body::Send(Send {
            to: Conv::direct("bob"),
            msg_id: MsgId([7; 16]),
            kind: MessageKind::TEXT,
            body: Cow::Borrowed(TEXT),
        }),
    )
}

fn push_frame() -> Frame<'static> {
    Frame::new(
        0,
        Body::Push(Message {
            conv: Conv::direct("alice"),
            sender: Cow::Borrowed("alice"),
            sender_device: Cow::Borrowed("phone"),
            conv_seq: 123_456,
            inbox_seq: 987_654,
            msg_id: MsgId([7; 16]),
            time: 1_767_225_600_000,
            kind: MessageKind::TEXT,
            flags: MessageFlags::NONE,
            body: Cow::Borrowed(TEXT),
        }),
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [("send_100b", send_frame()), ("push_100b", push_frame())] {
        let mut buf = Vec::with_capacity(512);
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                buf.clear();
                black_box(&frame).encode(&mut buf).ok();
                black_box(buf.len())
            })
        });
        let bytes = frame.to_bytes().unwrap_or_default();
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| match decode(black_box(&bytes), DEFAULT_MAX_BODY) {
                Ok(Some((f, used))) => black_box((f.request_id, used)),
                _ => panic!("benchmark frame failed to decode"),
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
