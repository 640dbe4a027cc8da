"""A minimal HTTP/2-only upstream over TLS (the `h2` library, which mitmproxy itself uses): it
answers any POST with a fixed OpenAI-style SSE stream (if the body asks to stream) or JSON."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading

import h2.config
import h2.connection
import h2.events

from tests.upstream import _self_signed

CHUNKS = [
    {"model": "h2-model", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"model": "h2-model", "choices": [{"index": 0, "delta": {"content": "over"}}]},
    {"model": "h2-model", "choices": [{"index": 0, "delta": {"content": " h2"}}]},
    {"model": "h2-model", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"model": "h2-model", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
]
COMPLETION = {"model": "h2-model", "choices": [{"index": 0, "message": {"content": "over h2"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


class H2Upstream:
    def __init__(self, tls_dir) -> None:
        cert, key = _self_signed(tls_dir)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["h2"])
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.protocols_seen: list[str] = []

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> H2Upstream:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context), self.loop).result(5)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.protocols_seen.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        await self._answer(conn, writer, event.stream_id, json.loads(bodies.pop(event.stream_id, b"{}")))
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _answer(self, conn, writer, stream_id: int, body: dict) -> None:
        streaming = bool(body.get("stream"))
        content_type = "text/event-stream" if streaming else "application/json"
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", content_type)])
        if not streaming:
            conn.send_data(stream_id, json.dumps(COMPLETION).encode(), end_stream=True)
            return
        for chunk in CHUNKS:
            conn.send_data(stream_id, b"data: " + json.dumps(chunk).encode() + b"\n\n")
            writer.write(conn.data_to_send())
            await writer.drain()
            await asyncio.sleep(0.02)
        conn.send_data(stream_id, b"data: [DONE]\n\n", end_stream=True)
