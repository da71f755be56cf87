//! Datagrams and TCP chunks from an untrusted relay: splitting a datagram and
//! opening its sealed unit must never panic, and forged units must never open.

#![no_main]

use fleetgate_tunnel::crypto::TunnelCipher;
use fleetgate_tunnel::wire::split_datagram;
use libfuzzer_sys::fuzz_target;

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fuzz_target!(|data: &[u8]| {
    let cipher = TunnelCipher::from_hex(KEY).expect("valid key");
    if let Some((_, sealed)) = split_datagram(data) {
        assert!(cipher.open(sealed).is_err(), "a forged unit opened");
    }
    let mut copy = data.to_vec();
    assert!(cipher.open_in_place(&mut copy).is_err(), "a forged unit opened");
});
