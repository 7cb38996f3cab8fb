"""The streaming server's pending requests: each behind a random single-use token that expires.

Exec, Attach and PortForward are validated by the CRI call, which leaves the request here and
answers a URL holding its token; the client's connection to that URL takes it (once). An unknown,
expired or already taken token finds nothing, and nothing runs. The cache is bounded: a flood of
requests nobody connects for cannot grow it past ``MAX_PENDING``.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from qmprt.errors import ResourceExhausted
from qmprt.pod.streams import StreamRequest

TOKEN_BYTES = 24
MAX_PENDING = 4096


class PendingRequests:
    def __init__(self, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._pending: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def put(self, request: StreamRequest) -> str:
        self._expire()
        if len(self._pending) >= MAX_PENDING:
            raise ResourceExhausted(
                f"{MAX_PENDING} streaming requests are waiting for their clients; connect to the URLs "
                "already given or wait for them to expire"
            )
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._pending[token] = (self._clock() + self.ttl_s, request)
        return token

    def take(self, token: str) -> StreamRequest | None:
        self._expire()
        entry = self._pending.pop(token, None)
        return None if entry is None else entry[1]

    def _expire(self) -> None:
        now = self._clock()
        while self._pending:
            token, (deadline, _) = next(iter(self._pending.items()))
            if deadline > now:
                return
            del self._pending[token]

    def __len__(self) -> int:
        return len(self._pending)
