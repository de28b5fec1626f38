//! Bad input gets a defined answer and never disturbs anyone else.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

async fn assert_error(client: &mut Client, raw: &str, code: &str, id: Option<Value>) {
    client.ws.send(Message::text(raw)).await.unwrap();
    let e = client
        .expect("error", &format!("the error for {raw}"))
        .await;
    assert_eq!(e["code"], code, "{raw} -> {e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(e.get("id").cloned(), id, "id echo for {raw}");
}

#[tokio::test]
async fn malformed_frames_get_error_frames_with_the_id_echoed() {
    let server = server(|_| {}).await;
    let mut c = connect(server.addr, "l1", "a").await;
    assert_error(&mut c, "{not json", "invalid_json", None).await;
    assert_error(&mut c, "[1,2]", "invalid_message", None).await;
    assert_error(&mut c, r#"{"id":1}"#, "invalid_message", Some(json!(1))).await;
    assert_error(
        &mut c,
        r#"{"type":3,"id":"x"}"#,
        "invalid_message",
        Some(json!("x")),
    )
    .await;
    assert_error(
        &mut c,
        r#"{"type":"dance","id":"m1"}"#,
        "unknown_type",
        Some(json!("m1")),
    )
    .await;
    assert_error(
        &mut c,
        r#"{"type":"broadcast","id":7}"#,
        "missing_field",
        Some(json!(7)),
    )
    .await;
    assert_error(
        &mut c,
        r#"{"type":"direct","data":1,"id":8}"#,
        "missing_field",
        Some(json!(8)),
    )
    .await;
    assert_error(
        &mut c,
        r#"{"type":"broadcast","data":1,"exclude_self":"yes"}"#,
        "invalid_message",
        None,
    )
    .await;
    // Still open and working.
    c.send(json!({"type": "presence"})).await;
    c.expect("presence", "presence after the errors").await;
    assert_eq!(server.manager.stats().messages_in, 9);
}

async fn assert_closed_with(bad: Message, code: u16, max_message_bytes: usize) {
    let server = server(|c| c.manager.max_message_bytes = max_message_bytes).await;
    let mut bystander = connect(server.addr, "l1", "bystander").await;
    let mut c = connect(server.addr, "l1", "bad").await;
    bystander.expect("member_joined", "bad's join").await;
    c.ws.send(bad).await.unwrap();
    let ending = c.ending("the close for bad input").await;
    assert_eq!(ending.code, Some(code), "{ending:?}");
    assert!(
        ending.goodbye.is_none(),
        "no retry invited for a client bug"
    );
    bystander.expect("member_left", "bad's leave").await;
    // The bystander is unaffected.
    bystander.send(broadcast(json!("still here"))).await;
    assert_eq!(
        bystander.expect("message", "own broadcast").await["data"],
        "still here"
    );
    eventually("one connection left", || {
        server.manager.stats().total_connections == 1
    })
    .await;
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    assert_closed_with(Message::binary(vec![1u8, 2, 3]), 1003, 65536).await;
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let big = format!(r#"{{"type":"broadcast","data":"{}"}}"#, "x".repeat(2048));
    assert_closed_with(Message::text(big), 1009, 1024).await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let frame = Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true);
    assert_closed_with(Message::Frame(frame), 1007, 65536).await;
}

#[tokio::test]
async fn malformed_lobby_codes_are_refused_before_the_upgrade() {
    let server = server(|_| {}).await;
    let err = try_raw_connect(server.addr, "/ws/bad%20lobby?token=a", ip(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    let long = "x".repeat(65);
    let err = try_raw_connect(server.addr, &format!("/ws/{long}?token=a"), ip(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}
