"""The README's quick start, run as written against a started server (only its address is
put in place of 127.0.0.1:8080), and the bot example against the real server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time

from switchboard_client import Client, Message

from .conftest import PACKAGE, WAIT, ServerFactory, read_line, within


def quick_start() -> tuple[str, str, str]:
    """The server command, the Python block and its expected output, from the README."""
    readme = (PACKAGE / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    shell = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    output = re.findall(r"```text\n(.*?)```", section, re.S)[0]
    return shell, code, output


def test_the_quick_start_runs_as_written(start_server: ServerFactory) -> None:
    shell, code, output = quick_start()
    # The server as the README starts it: dev mode and the API key it names.
    key = re.search(r"SWITCHBOARD_API__KEY=(\S+)", shell)
    assert key is not None and "--dev" in shell
    server = start_server({"SWITCHBOARD_API__KEY": key.group(1)})
    assert code.count("127.0.0.1:8080") == 2
    script = code.replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == output


def test_the_bot_answers_in_every_lobby(start_server: ServerFactory) -> None:
    server = start_server()
    env = {
        **os.environ,
        "SERVER_URL": server.ws_url,
        "BOT_TOKEN": "bot",
        "BOT_LOBBIES": "bot-a,bot-b",
    }
    bot = subprocess.Popen(
        [sys.executable, str(PACKAGE / "examples" / "bot.py")], env=env, stdout=subprocess.PIPE
    )
    try:
        ready = json.loads(read_line(bot.stdout, time.monotonic() + WAIT))
        assert ready == {"ready": ["bot-a", "bot-b"]}

        async def talk() -> None:
            async with Client(server.ws_url, token="lena") as lena:
                events = lena.events()
                for lobby in ("bot-a", "bot-b"):
                    await within(lena.join(lobby))
                    await within(lena.broadcast(lobby, {"text": "!ping"}))
                    while True:
                        message = await within(events.next(Message))
                        if message.sender == "bot":
                            break
                    assert message.lobby == lobby
                    assert message.data == {"text": "pong", "to": "lena"}
                await within(lena.broadcast("bot-b", {"text": "!who"}))
                while True:
                    message = await within(events.next(Message))
                    if message.sender == "bot":
                        break
                assert message.data["text"] == "bot, lena"

        asyncio.run(talk())
    finally:
        bot.terminate()
        bot.wait(WAIT)
        if bot.stdout is not None:
            bot.stdout.close()
