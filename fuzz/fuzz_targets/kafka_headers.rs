//! The headers of request and reply records, as dbproc and the API decode them.
//!
//! Input: lines of `name:value`; a line without `:` is a header without a value (Kafka allows
//! both, and repeated names). Nothing may panic, and decoded headers must survive encode∘decode.

#![no_main]

use broker_auth_contract::{RawHeader, ReplyHeaders, RequestHeaders};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw: Vec<RawHeader<'_>> = data
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            // Kafka header names are strings; values are any bytes.
            match line.iter().position(|&b| b == b':') {
                Some(colon) => std::str::from_utf8(&line[..colon])
                    .ok()
                    .map(|name| (name, Some(&line[colon + 1..]))),
                None => std::str::from_utf8(line).ok().map(|name| (name, None)),
            }
        })
        .collect();

    if let Ok(headers) = RequestHeaders::decode(&raw) {
        let encoded = headers.encode();
        let again: Vec<RawHeader<'_>> = encoded
            .iter()
            .map(|(name, value)| (*name, Some(value.as_bytes())))
            .collect();
        assert_eq!(RequestHeaders::decode(&again).expect("encoded headers decode"), headers);
    }
    if let Ok(headers) = ReplyHeaders::decode(&raw) {
        let encoded = headers.encode();
        let again: Vec<RawHeader<'_>> = encoded
            .iter()
            .map(|(name, value)| (*name, Some(value.as_bytes())))
            .collect();
        assert_eq!(ReplyHeaders::decode(&again).expect("encoded headers decode"), headers);
    }
});
