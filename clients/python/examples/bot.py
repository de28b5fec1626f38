"""A bot: one protocol-v2 connection in several lobbies, answering messages.

    SERVER_URL=ws://127.0.0.1:8080 BOT_TOKEN=bot BOT_LOBBIES=lobby-1,lobby-2 \\
        python examples/bot.py

(`--dev` server: the token is the user id.) In any lobby it is in, `!ping` is answered with
`pong`, `!roll` with a die roll, `!who` with the lobby's users. It reconnects by itself and,
after a reconnect, answers what it missed (recovery replays it), never twice. It prints
`{"ready": [lobbies]}` once it is in every lobby, and one line per answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import random

from switchboard_client import Client, Message, RequestError


async def answer(client: Client, message: Message) -> None:
    """Answers one command; a failure (say, the connection dropped meanwhile) is logged and
    the bot goes on."""
    me = client.welcome.user_id if client.welcome is not None else None
    if message.sender is None or message.sender == me:
        return  # the backend's messages and our own answers are not commands
    text = message.data.get("text") if isinstance(message.data, dict) else None
    reply: str | None = None
    if text == "!ping":
        reply = "pong"
    elif text == "!roll":
        reply = f"{message.sender} rolled {random.randint(1, 6)}"
    elif text == "!who":
        reply = ", ".join(await client.presence(message.lobby))
    if reply is None:
        return
    try:
        await client.broadcast(message.lobby, {"text": reply, "to": message.sender})
        print(json.dumps({"answered": message.lobby, "text": reply}), flush=True)
    except RequestError as error:
        print(json.dumps({"failed": message.lobby, "code": error.code}), flush=True)


async def main() -> None:
    url = os.environ.get("SERVER_URL", "ws://127.0.0.1:8080")
    token = os.environ.get("BOT_TOKEN", "bot")
    lobbies = [lobby for lobby in os.environ.get("BOT_LOBBIES", "lobby-1").split(",") if lobby]
    async with Client(url, token=token) as client:
        events = client.events()
        running: set[asyncio.Task[None]] = set()
        for lobby in lobbies:
            await client.join(lobby)
        print(json.dumps({"ready": lobbies}), flush=True)
        async for event in events:
            if isinstance(event, Message):
                # Each answer is its own task: a slow one never holds the others.
                task = asyncio.create_task(answer(client, event))
                running.add(task)
                task.add_done_callback(running.discard)


if __name__ == "__main__":
    asyncio.run(main())
