//! The inbound parser of client frames (`switchboard::protocol::fuzz_parse`): whatever a client
//! sends in a text frame, the parser must not panic, and its answer must be what the protocol
//! defines.
//!
//! - A refused frame gets an `error` frame: valid JSON, exactly the fields `type` ("error"),
//!   `code` (one of the protocol's codes), `message` (non-empty) and, optionally, `id`.
//! - The echoed `id` is a string or a number, and is the frame's own top-level `id`.
//! - `invalid_json` exactly when the frame is not (decodable) JSON; an accepted frame is a JSON
//!   object with a string `type`, and `broadcast` / `direct` frames carry what they need.
#![no_main]

use std::borrow::Cow;
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

const CODES: [&str; 6] = [
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "missing_field",
    "rate_limited",
    "not_allowed",
];

/// The error frame, exactly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: Cow<'a, str>,
    code: Cow<'a, str>,
    message: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// The fields of an accepted frame that the parser relies on.
#[derive(Deserialize)]
struct Accepted<'a> {
    #[serde(rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    to: Option<&'a RawValue>,
}

fuzz_target!(|bytes: &[u8]| {
    // Text frames that are not UTF-8 never reach the parser: the stack closes with 1007.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let is_json = serde_json::from_str::<IgnoredAny>(text).is_ok();
    let is_object = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{');
    match switchboard::protocol::fuzz_parse(text) {
        None => {
            assert!(is_object, "accepted a frame that is not an object");
            let frame: Accepted<'_> = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("accepted a frame without a string type: {e}"));
            match &*frame.kind {
                "broadcast" => assert!(frame.data.is_some(), "broadcast without data"),
                "direct" => {
                    assert!(frame.data.is_some(), "direct without data");
                    let to = frame.to.expect("direct without to");
                    let to: Cow<'_, str> = serde_json::from_str(to.get())
                        .unwrap_or_else(|e| panic!("direct to a non-string: {e}"));
                    assert!(
                        switchboard::UserId::parse(&to).is_ok(),
                        "direct to an invalid user id {to:?}"
                    );
                }
                _ => {}
            }
        }
        Some(answer) => {
            let frame: ErrorFrame<'_> = serde_json::from_str(&answer)
                .unwrap_or_else(|e| panic!("error frame is not the protocol's: {e}: {answer}"));
            assert_eq!(frame.kind, "error", "{answer}");
            assert!(CODES.contains(&&*frame.code), "unknown code: {answer}");
            assert!(!frame.message.is_empty(), "empty message: {answer}");
            if frame.code == "invalid_json" {
                // Not JSON, or JSON whose strings do not decode (a lone surrogate escape such
                // as `\ud800` in a key): serde_json cannot read it as a value either.
                assert!(
                    serde_json::from_str::<serde_json::Value>(text).is_err(),
                    "JSON called invalid_json: {answer}"
                );
            } else {
                assert!(is_json, "not JSON, yet {answer}");
            }
            if let Some(id) = frame.id {
                let first = id.get().as_bytes()[0];
                assert!(
                    first == b'"' || first == b'-' || first.is_ascii_digit(),
                    "id is neither a string nor a number: {answer}"
                );
                if is_object {
                    let own: HashMap<String, &RawValue> = serde_json::from_str(text)
                        .unwrap_or_else(|e| panic!("an id echoed from a bad object: {e}"));
                    assert_eq!(
                        own.get("id").map(|raw| raw.get()),
                        Some(id.get()),
                        "the echoed id is not the frame's: {answer}"
                    );
                } else {
                    panic!("an id echoed from a non-object: {answer}");
                }
            }
        }
    }
});
