"""What an SDK's answers were on the wire: a recording HTTP transport, and SSE parsing.

The `openai` SDK runs on httpx and the `anthropic` SDK on its fork httpx2: `Recording`
gives either an HTTP client (`client(httpx)`, `client(httpx2)`) that keeps a copy of every
answer's body as the SDK reads it, so that what the SDK parsed can be checked as it was
sent.
"""

import json
from pathlib import Path

import httpx

FIXTURES = Path(__file__).parent / "fixtures"
REPLAY_TIMEOUT_SECONDS = 30


class Recording:
    """The bodies of every answer its clients got, in order, each a list of chunks."""

    def __init__(self):
        self.bodies: list[list[bytes]] = []

    def client(self, http=httpx):
        """A new `http.Client` whose answers this records."""
        return http.Client(transport=_tee(self, http))

    def json(self, index: int = -1):
        """The `index`th answer's JSON body."""
        return json.loads(b"".join(self.bodies[index]))

    def events(self, index: int = -1) -> list[tuple[str, dict]]:
        """The server-sent events of the `index`th answer."""
        return sse_lines(b"".join(self.bodies[index]).decode().splitlines())


def _tee(recording: Recording, http):
    inner = http.HTTPTransport()

    class Tee(http.BaseTransport):
        def handle_request(self, request):
            response = inner.handle_request(request)
            kept: list[bytes] = []
            recording.bodies.append(kept)

            class Body(http.SyncByteStream):
                def __iter__(self):
                    for chunk in response.stream:
                        kept.append(chunk)
                        yield chunk

                def close(self):
                    response.stream.close()

            return http.Response(
                response.status_code,
                headers=response.headers,
                stream=Body(),
                extensions=response.extensions,
            )

        def close(self):
            inner.close()

    return Tee()


def sse(response) -> list[tuple[str, dict]]:
    """(event name, data) of each event of a streamed answer, as read off the wire."""
    return sse_lines(response.iter_lines())


def sse_lines(lines) -> list[tuple[str, dict]]:
    events, name = [], ""
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line[5:])))
            name = ""
    return events


def replay(base_url: str, name: str, secret: str, **fields) -> tuple[httpx.Response, list]:
    """POST the request recorded in fixtures/`name` (path, headers, body; `fields` replace
    the body's) to the gateway at `base_url` with `secret`: (answer, its events)."""
    recorded = json.loads((FIXTURES / name).read_text())
    headers = {**recorded["headers"], "authorization": f"Bearer {secret}"}
    with httpx.stream(
        "POST",
        base_url + recorded["path"],
        json={**recorded["body"], **fields},
        headers=headers,
        timeout=REPLAY_TIMEOUT_SECONDS,
    ) as answer:
        return answer, sse(answer)
