//! The wire decoder, both directions: any frame either decodes or is refused with an error that
//! never echoes the frame (it may hold secrets); whatever decodes re-encodes and decodes again to
//! the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stagely_protocol::{self as protocol, Incoming};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    match protocol::decode_agent_message(frame) {
        Ok(Incoming::Known(msg)) => {
            let again = protocol::encode(&msg);
            let back = protocol::decode_agent_message(&again).expect("re-encoded frame decodes");
            assert!(matches!(back, Incoming::Known(_)));
        }
        Ok(Incoming::Unknown(_)) => {}
        Err(e) => assert_no_echo(&e.to_string(), frame),
    }
    match protocol::decode_server_message(frame) {
        Ok(Incoming::Known(msg)) => {
            let again = protocol::encode(&msg);
            assert!(matches!(
                protocol::decode_server_message(&again),
                Ok(Incoming::Known(_))
            ));
        }
        Ok(Incoming::Unknown(_)) => {}
        Err(e) => assert_no_echo(&e.to_string(), frame),
    }
});

/// An error text must not carry a long run of the frame (a secret could be in it).
fn assert_no_echo(error: &str, frame: &str) {
    if frame.len() >= 24 {
        for window in frame.as_bytes().windows(24) {
            if let Ok(w) = std::str::from_utf8(window) {
                assert!(!error.contains(w), "decode error echoes the frame: {error}");
            }
        }
    }
}
