//! axum integration: extractors for the connect request of protocols v1 and v2 ([`WsConnect`] for
//! WebSocket, [`ConnectParams`] alone for SSE).
//!
//! Route `GET /ws/{lobby}` to a handler taking [`WsConnect`], authenticate its `token`, then
//! call [`Manager::accept`](crate::Manager::accept) (or `refuse` with 4001). The app must be
//! served with `into_make_service_with_connect_info::<SocketAddr>()` so the peer is known.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Query, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::ids::LobbyCode;
use crate::ws::Upgrade;

/// A WebSocket connect request: `GET /ws/{lobby}?token=T` (or `Authorization: Bearer T`).
///
/// A malformed lobby code is refused before the upgrade with 400: it is a client bug, not a
/// condition a client handles.
#[derive(Debug)]
#[non_exhaustive]
pub struct WsConnect {
    /// The pending upgrade; pass it to `Manager::accept` or `Manager::refuse`.
    pub upgrade: Upgrade,
    /// The validated `{lobby}` path parameter; `None` on a route without one (`/ws`, for
    /// protocol v2 clients that join lobbies later).
    pub lobby: Option<LobbyCode>,
    /// The `token` query parameter, else the bearer token, if any.
    pub token: Option<String>,
    /// The TCP peer (the client, or a proxy in front of it).
    pub peer: SocketAddr,
    /// The request's `Origin` header, if any (browsers always send one).
    pub origin: Option<String>,
    /// `since=OFFSET&epoch=EPOCH`: a reconnecting client asks for what it missed.
    pub recovery: Option<crate::history::Recovery>,
}

#[derive(Deserialize, Debug, Default, PartialEq)]
struct ConnectQuery {
    token: Option<String>,
    since: Option<u64>,
    epoch: Option<String>,
    lobbies: Option<String>,
}

impl ConnectQuery {
    /// The query string as `Query<ConnectQuery>` (serde_urlencoded) reads it. Read here
    /// directly when nothing in it is encoded (no `%`, no `+`: what clients send), which
    /// costs a fraction of serde's way; `Err` where serde fails.
    fn from_uri(uri: &Uri) -> Result<Self, ()> {
        let query = uri.query().unwrap_or_default();
        if query.contains(['%', '+']) {
            return Self::by_serde(uri);
        }
        let mut read = Self::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "token" => &mut read.token,
                "epoch" => &mut read.epoch,
                "lobbies" => &mut read.lobbies,
                "since" if read.since.is_none() => {
                    read.since = Some(value.parse().map_err(drop)?);
                    continue;
                }
                // A field given twice.
                "since" => return Err(()),
                _ => continue,
            };
            if slot.is_some() {
                return Err(());
            }
            *slot = Some(value.to_owned());
        }
        Ok(read)
    }

    fn by_serde(uri: &Uri) -> Result<Self, ()> {
        Query::<Self>::try_from_uri(uri)
            .map(|query| query.0)
            .map_err(drop)
    }
}

/// At most this many lobbies in a `lobbies=` list (the library's own cap on lobbies per
/// connection is `limits.max_lobbies_per_connection`, checked at every join).
const MAX_LISTED_LOBBIES: usize = 256;

impl WsConnect {
    /// The upgrade, and what the request carries apart from it.
    pub fn into_parts(self) -> (Upgrade, ConnectParams) {
        let params = ConnectParams {
            lobby: self.lobby,
            token: self.token,
            peer: self.peer,
            origin: self.origin,
            recovery: self.recovery,
            // A WebSocket joins its further lobbies with `join` frames.
            lobbies: Vec::new(),
        };
        (self.upgrade, params)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsConnect {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let upgrade = Upgrade::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let p = ConnectParams::from_request_parts(parts, state).await?;
        Ok(Self {
            upgrade,
            lobby: p.lobby,
            token: p.token,
            peer: p.peer,
            origin: p.origin,
            recovery: p.recovery,
        })
    }
}

/// What a connect request carries, whatever the transport: the path's `{lobby}`, the token,
/// the peer, the `Origin`, and a recovery request (`since` + `epoch`, or for SSE the
/// `Last-Event-ID: EPOCH:OFFSET` header the browser sends by itself).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectParams {
    /// The validated `{lobby}` path parameter; `None` on a route without one (`/ws`, for
    /// protocol v2 clients that join lobbies later).
    pub lobby: Option<LobbyCode>,
    /// The `token` query parameter, else the bearer token, if any.
    pub token: Option<String>,
    /// The TCP peer (the client, or a proxy in front of it).
    pub peer: SocketAddr,
    /// The request's `Origin` header, if any.
    pub origin: Option<String>,
    /// What a reconnecting client asks to recover.
    pub recovery: Option<crate::history::Recovery>,
    /// Protocol v2 (SSE): the `lobbies=a,b` list to join, each with what the browser's
    /// `Last-Event-ID` says it last saw there (`LOBBY=EPOCH:OFFSET,...`).
    pub lobbies: Vec<(LobbyCode, Option<crate::history::Recovery>)>,
}

impl<S: Send + Sync> FromRequestParts<S> for ConnectParams {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // A route without parameters has no `{lobby}`: the request names none.
        let params = RawPathParams::from_request_parts(parts, state).await.ok();
        let lobby = params
            .iter()
            .flat_map(|p| p.iter())
            .find(|(name, _)| *name == "lobby")
            .map(|(_, value)| value);
        let ConnectInfo(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .cloned()
            .ok_or_else(|| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "serve the app with into_make_service_with_connect_info::<SocketAddr>()",
                )
                    .into_response()
            })?;
        Self::from_head(lobby, &parts.uri, &parts.headers, peer)
            .map_err(IntoResponse::into_response)
    }
}

impl ConnectParams {
    /// The same, from a request head read without axum's router: `lobby` is the path's
    /// `{lobby}` segment, if the route has one.
    pub fn from_head(
        lobby: Option<&str>,
        uri: &Uri,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<Self, BadConnect> {
        let lobby = match lobby {
            None => None,
            Some(value) => Some(LobbyCode::parse(value).map_err(|_| {
                BadConnect("invalid lobby code: 1-64 characters of [A-Za-z0-9_.:-]")
            })?),
        };
        let query = ConnectQuery::from_uri(uri)
            .map_err(|()| BadConnect("invalid query string (since must be an integer)"))?;
        let last_event_id = || {
            let id = headers.get("last-event-id")?.to_str().ok()?;
            let (epoch, offset) = id.rsplit_once(':')?;
            Some(crate::history::Recovery {
                since: offset.parse().ok()?,
                epoch: epoch.to_owned(),
            })
        };
        // The browser's own Last-Event-ID (an EventSource resuming) is always newer than
        // the `since` of the URL it was opened with.
        let recovery = match (query.since, query.epoch.clone()) {
            (Some(since), Some(epoch)) => {
                last_event_id().or(Some(crate::history::Recovery { since, epoch }))
            }
            (None, None) => last_event_id(),
            _ => return Err(BadConnect("since and epoch go together")),
        };
        let bearer = || {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim().to_owned())
        };
        let positions = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .filter(|id| id.contains('='))
            .map(crate::sse::positions_from_event_id)
            .unwrap_or_default();
        let mut lobbies = Vec::new();
        for code in query.lobbies.iter().flat_map(|l| l.split(',')) {
            let lobby = LobbyCode::parse(code).map_err(|_| {
                BadConnect("invalid lobby code in lobbies=: 1-64 characters of [A-Za-z0-9_.:-]")
            })?;
            if lobbies.len() == MAX_LISTED_LOBBIES {
                return Err(BadConnect("too many lobbies in lobbies="));
            }
            let recovery = positions
                .iter()
                .find(|(l, _)| *l == lobby)
                .map(|(_, r)| r.clone());
            lobbies.push((lobby, recovery));
        }
        let token = query.token.or_else(bearer);
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self {
            lobby,
            token,
            peer,
            origin,
            recovery,
            lobbies,
        })
    }
}

/// A connect request that does not parse (a malformed lobby code, query or recovery): 400
/// with this text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadConnect(pub &'static str);

impl IntoResponse for BadConnect {
    fn into_response(self) -> Response {
        bad_request(self.0)
    }
}

fn bad_request(message: &'static str) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_queries_are_read_as_serde_reads_them() {
        let queries = [
            "",
            "token=t",
            "token=",
            "token",
            "token=a=b",
            "&&token=t&&",
            "token=t&since=5&epoch=e&lobbies=a,b",
            "since=18446744073709551615&epoch=e",
            "since=18446744073709551616",
            "since=",
            "since=-1",
            "since=x",
            "since=1&since=2",
            "token=a&token=b",
            "epoch=a&epoch=b",
            "lobbies=a&lobbies=b",
            "other=1&other=2&token=t",
            "=x&token=t",
            "TOKEN=t",
            "token=t;since=1",
            "token=%41&since=1",
            "token=a+b",
            "since=%31",
            "since=+1",
        ];
        for query in queries {
            let uri: Uri = format!("/ws/l1?{query}").parse().unwrap();
            assert_eq!(
                ConnectQuery::from_uri(&uri),
                ConnectQuery::by_serde(&uri),
                "{query}"
            );
        }
        let bare: Uri = "/ws/l1".parse().unwrap();
        assert_eq!(ConnectQuery::from_uri(&bare), Ok(ConnectQuery::default()));
        assert_eq!(ConnectQuery::by_serde(&bare), Ok(ConnectQuery::default()));
    }
}
