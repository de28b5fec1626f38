"""Verifying the server's signed calls inside Starlette and FastAPI apps, in one line.

Needs the `fastapi` extra (`pip install switchboard-client[fastapi]`): Starlette is the only
import, and FastAPI's `Request` is Starlette's, so the same objects serve both.

FastAPI::

    hook = SwitchboardWebhook(secrets=["s3cret"])

    @app.post("/switchboard/webhook")
    async def webhook(events: Annotated[list[AnyEvent], Depends(hook)]) -> None: ...

Plain Starlette::

    async def webhook(request: Request) -> Response:
        events = await read_webhook(request, ["s3cret"])   # raises WebhookVerificationError

Any other ASGI framework (or none): `switchboard_client.verify_asgi_webhook(scope, receive,
secrets)`, which needs nothing but the package.

A call that does not verify is answered 401 by the dependencies (the server does not retry a
4xx, and a forged call must not look like an outage).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.requests import Request

from .errors import WebhookVerificationError
from .webhooks import (
    AnyEvent,
    ConnectAttempt,
    JoinRequest,
    RpcRequest,
    verify_connect,
    verify_join,
    verify_rpc,
    verify_webhook,
)

__all__ = [
    "SwitchboardConnect",
    "SwitchboardJoin",
    "SwitchboardRpc",
    "SwitchboardWebhook",
    "read_connect",
    "read_join",
    "read_rpc",
    "read_webhook",
]

Secrets = str | bytes | Iterable[str | bytes]


async def read_webhook(
    request: Request, secrets: Secrets, tolerance_s: float = 300
) -> list[AnyEvent]:
    """The verified, typed events of a webhook request (raises `WebhookVerificationError`)."""
    return verify_webhook(secrets, request.headers.items(), await request.body(), tolerance_s)


async def read_connect(
    request: Request, secrets: Secrets, tolerance_s: float = 300
) -> ConnectAttempt:
    """The verified connect-proxy attempt of a request."""
    return verify_connect(secrets, request.headers.items(), await request.body(), tolerance_s)


async def read_join(request: Request, secrets: Secrets, tolerance_s: float = 300) -> JoinRequest:
    """The verified join-proxy request of a request."""
    return verify_join(secrets, request.headers.items(), await request.body(), tolerance_s)


async def read_rpc(request: Request, secrets: Secrets, tolerance_s: float = 300) -> RpcRequest:
    """The verified RPC call of a request."""
    return verify_rpc(secrets, request.headers.items(), await request.body(), tolerance_s)


class _Dependency:
    """Keeps the secrets (materialised once: an iterator would be used up by the first call)."""

    def __init__(self, secrets: Secrets, tolerance_s: float = 300) -> None:
        self.secrets: list[str | bytes] = (
            [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
        )
        self.tolerance_s = tolerance_s

    @staticmethod
    def _refuse(error: WebhookVerificationError) -> HTTPException:
        return HTTPException(status_code=401, detail=error.code)


class SwitchboardWebhook(_Dependency):
    """FastAPI dependency: `events: Annotated[list[AnyEvent], Depends(SwitchboardWebhook(s))]`."""

    async def __call__(self, request: Request) -> list[AnyEvent]:
        try:
            return await read_webhook(request, self.secrets, self.tolerance_s)
        except WebhookVerificationError as error:
            raise self._refuse(error) from error


class SwitchboardConnect(_Dependency):
    """FastAPI dependency: `attempt: Annotated[ConnectAttempt, Depends(SwitchboardConnect(s))]`."""

    async def __call__(self, request: Request) -> ConnectAttempt:
        try:
            return await read_connect(request, self.secrets, self.tolerance_s)
        except WebhookVerificationError as error:
            raise self._refuse(error) from error


class SwitchboardJoin(_Dependency):
    """FastAPI dependency: `join: Annotated[JoinRequest, Depends(SwitchboardJoin(s))]`."""

    async def __call__(self, request: Request) -> JoinRequest:
        try:
            return await read_join(request, self.secrets, self.tolerance_s)
        except WebhookVerificationError as error:
            raise self._refuse(error) from error


class SwitchboardRpc(_Dependency):
    """FastAPI dependency: `call: Annotated[RpcRequest, Depends(SwitchboardRpc(s))]`."""

    async def __call__(self, request: Request) -> RpcRequest:
        try:
            return await read_rpc(request, self.secrets, self.tolerance_s)
        except WebhookVerificationError as error:
            raise self._refuse(error) from error
