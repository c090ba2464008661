//! Feeds arbitrary bytes to the AMQP client's reading side as if RabbitMQ
//! sent them, cut into arbitrary chunks: frames cut, methods joined with
//! their content headers and bodies, every method, property and field
//! table decoded. It must never panic, never assemble a body of another
//! size than declared, and read the same whatever the cuts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The first byte says how many cut offsets (two bytes each) follow.
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let cut_bytes = (usize::from(n % 16) * 2).min(rest.len());
    let (cuts, data) = rest.split_at(cut_bytes);
    let cuts: Vec<usize> = cuts
        .chunks(2)
        .map(|c| usize::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .collect();
    // A small frame_max, so that the limit is met too.
    let frame_max = 8192;
    let whole = amqp_bridge::fuzzing::read(data, &[], frame_max);
    let cut = amqp_bridge::fuzzing::read(data, &cuts, frame_max);
    assert_eq!(whole, cut, "what is read depends on how the bytes were cut");
});
