"""uvicorn's h11 protocol with the two timeouts it lacks: a client gets ``header_timeout`` seconds from connecting
(or from the end of its previous answer) to send the request line and headers, and ``body_timeout`` seconds to send
the body after them; otherwise the connection is closed. Idle keep-alive connections are still closed by uvicorn's
own ``timeout_keep_alive``. Without these, 1000 half-open connections that never send a byte stay open for ever
(slowloris).

Use it as ``uvicorn.run(app, http=timeout_protocol(header_timeout=10, body_timeout=60))``.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HEADER_TIMEOUT", "BODY_TIMEOUT", "timeout_protocol"]

log = logging.getLogger("hysac.service")

#: seconds for the request line and headers, and for the body after them
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0


class _TimeoutH11Protocol(H11Protocol):
    header_timeout = HEADER_TIMEOUT
    body_timeout = BODY_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(self.header_timeout, "headers")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        if seconds and seconds > 0:
            self._deadline = self.loop.call_later(seconds, self._expire, what)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if what == "headers" and state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            log.info("closing a connection that sent no request headers within %.0f s", self.header_timeout)
            self.transport.close()
        elif what == "body" and state is h11.SEND_BODY:
            log.info("closing a connection whose request body did not arrive within %.0f s", self.body_timeout)
            self.transport.close()

    def handle_events(self) -> None:
        before = self.conn.their_state
        super().handle_events()
        after = self.conn.their_state
        if after is not before:
            if after is h11.SEND_BODY:
                self._arm(self.body_timeout, "body")
            elif after is not h11.IDLE:
                self._disarm()  # headers (and body) in: the answer takes as long as it takes

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(self.header_timeout, "headers")  # the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def timeout_protocol(header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT) -> type:
    """An h11 protocol class for uvicorn's ``http=`` with these timeouts (seconds; 0 turns one off)."""
    for name, value in (("header_timeout", header_timeout), ("body_timeout", body_timeout)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            from ..errors import InputError

            raise InputError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return type("TimeoutH11Protocol", (_TimeoutH11Protocol,),
                {"header_timeout": float(header_timeout), "body_timeout": float(body_timeout)})
