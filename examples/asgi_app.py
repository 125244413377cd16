"""A framework-free ASGI application (HTTP and websocket) for uvicorn.

    uvicorn --app-dir examples asgi_app:app --loop aiouring:new_event_loop

uvicorn (0.36 and later) takes ``--loop`` as an import string naming an event
loop factory: a callable with no arguments that returns a new loop, which is
exactly :func:`aiouring.new_event_loop`.

``GET /`` answers with the loop's module (so you can see aiouring serve it),
``POST /`` answers with the SHA-256 of the body, and the websocket at ``/ws``
echoes each message prefixed by the loop's module.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, Awaitable, Callable, Dict

Scope = Dict[str, Any]
Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await _http(scope, receive, send)
    elif scope["type"] == "websocket":
        await _websocket(receive, send)
    elif scope["type"] == "lifespan":
        await receive()     # lifespan.startup
        await send({"type": "lifespan.startup.complete"})
        await receive()     # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    digest = hashlib.sha256()
    size = 0
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        digest.update(chunk)
        size += len(chunk)
        more_body = message.get("more_body", False)
    if scope["method"] == "POST":
        payload = {"size": size, "sha256": digest.hexdigest()}
    else:
        payload = {"loop": _loop_module()}
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _websocket(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            text = message.get("text")
            if text is None:
                text = message["bytes"].decode()
            await send({"type": "websocket.send", "text": f"{_loop_module()}: {text}"})
        else:   # websocket.disconnect
            return
