//! The hand-written name parsers (`LobbyCode::parse`, `UserId::parse`) against their
//! definitions: a lobby code is 1-64 characters of `[A-Za-z0-9_.:-]`, a user id 1-128
//! characters without control characters; an accepted name is kept unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::{LobbyCode, UserId};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let lobby_ok = (1..=64).contains(&text.chars().count())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    match LobbyCode::parse(text) {
        Ok(code) => {
            assert!(lobby_ok, "accepted lobby code {text:?}");
            assert_eq!(code.as_str(), text);
        }
        Err(_) => assert!(!lobby_ok, "refused lobby code {text:?}"),
    }
    let user_ok =
        (1..=128).contains(&text.chars().count()) && !text.chars().any(|c| c.is_control());
    match UserId::parse(text) {
        Ok(user) => {
            assert!(user_ok, "accepted user id {text:?}");
            assert_eq!(user.as_str(), text);
        }
        Err(_) => assert!(!user_ok, "refused user id {text:?}"),
    }
});
