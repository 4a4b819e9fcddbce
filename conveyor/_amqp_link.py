"""One RabbitMQ connection and its confirm-mode channel, reopened when it breaks.

:class:`conveyor.brokers.amqp.AMQPBroker` keeps two links
(docs/decisions/0022-rabbitmq-reconnection.md): one consumes, acknowledges
and renews, the other publishes.  Under a memory or disk alarm RabbitMQ stops
reading from a connection as soon as it publishes; a worker whose task sends
a task would otherwise stop acknowledging and renewing everything it holds,
and lose it all when the blocked connection is torn down.

A link is used under its lock.  ``run`` retries an operation on a fresh
connection with capped exponential backoff; an operation blocked by an
alarm longer than ``blocked_connection_timeout`` raises
:class:`BrokerUnavailable` at once instead, and so does a connect that got
no answer within ``connect_timeout`` (TCP and the AMQP handshake together):
the path is dead, and each further try would wait as long again.  A
connection that went silent is terminated within a heartbeat
(:mod:`conveyor._amqp_silence`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.connection_workflow import (
    AMQPConnectorException,
    AMQPConnectorStackTimeout,
)

from conveyor._amqp import AMQPOptions, ssl_context, tls_server_name
from conveyor._amqp_confirms import Confirms
from conveyor._amqp_onewrite import OneWriteConnection
from conveyor._amqp_silence import watch
from conveyor.exceptions import BrokerUnavailable, ConfigurationError

T = TypeVar("T")
LINK_ERRORS = (  # a connection or channel that failed under us: reconnect
    pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError,
    pika.exceptions.ChannelWrongStateError, pika.exceptions.ConnectionWrongStateError)
_log = logging.getLogger("conveyor.brokers.amqp")


class _PikaPlumbing(logging.Filter):
    """pika logs every connection attempt (seven INFO lines) and every failure (six
    ERROR lines and a traceback); the broker reports the outcome itself, once, with
    the server's place (``BrokerUnavailable``, the worker's "broker unavailable"
    warning).  Only pika's critical records get through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


for _name in ("pika.adapters.utils.connection_workflow", "pika.adapters.utils.io_services_utils",
              "pika.adapters.blocking_connection", "pika.adapters.base_connection",
              "pika.connection"):
    logging.getLogger(_name).addFilter(_PikaPlumbing())


def explain_close(reason: BaseException) -> None:
    """Say why RabbitMQ took leases away, when the reason is a server setting."""
    text = str(getattr(reason, "reply_text", ""))
    if "acknowledgement" in text and "timed out" in text:
        _log.error("RabbitMQ's consumer_timeout closed the channel of a running task and "
                   "handed its message out again (a task that outlived its lease keeps it "
                   "from running twice): set consumer_timeout in rabbitmq.conf above the "
                   "longest task (docs/operations.md, RabbitMQ)")


def _innermost(exc: BaseException) -> BaseException:
    """pika wraps the socket's error in two or three of its own (in ``args`` or an
    ``exception`` attribute): the first one, e.g. ``ConnectionRefusedError``."""
    while True:
        inner = exc.args[0] if exc.args else getattr(exc, "exception", None)
        if not isinstance(inner, BaseException):
            return exc
        exc = inner


def _refused(exc: pika.exceptions.ChannelClosedByBroker) -> bool:
    """A declaration RabbitMQ refuses (a queue of another type or arguments, or one
    deleted under us), as opposed to ``consumer_timeout`` closing the channel."""
    return exc.reply_code == 404 or "inequivalent arg" in str(exc.reply_text)


def _hint(exc: pika.exceptions.ChannelClosedByBroker) -> str:
    """What to change when an existing queue was declared with other arguments."""
    if "inequivalent arg" not in str(exc.reply_text):
        return ""
    return ("; x-max-priority follows the queue's max_priority in task_queues, else "
            "task_queue_max_priority (unset: none), and x-queue-type "
            "broker_transport_options['queue_type']: set them to match the queue, or "
            "drain and delete it")


def refusal(o: AMQPOptions, exc: pika.exceptions.ChannelClosedByBroker) -> ConfigurationError:
    """The error for a declaration RabbitMQ refused, with what to change."""
    return ConfigurationError(f"RabbitMQ at {o.place} refused: {exc.reply_text}{_hint(exc)}")


def connection_parameters(o: AMQPOptions,
                          heartbeat: int | None = None) -> pika.ConnectionParameters:
    """pika's parameters for the broker (and the control channel beside it);
    ``heartbeat``: the timeout to ask for when the options set none (``None``:
    the server's)."""
    extra: dict[str, Any] = {}
    if o.tls:
        extra["ssl_options"] = pika.SSLOptions(ssl_context(o), tls_server_name(o))
    chosen = o.heartbeat if o.heartbeat is not None else heartbeat
    if chosen is not None:
        extra["heartbeat"] = chosen
    # stack_timeout bounds the whole bring-up: a path that accepts the TCP
    # connection and then says nothing would otherwise hold it for 15 s.
    return pika.ConnectionParameters(
        host=o.host, port=o.port, virtual_host=o.vhost,
        credentials=pika.PlainCredentials(o.username, o.password),
        socket_timeout=o.connect_timeout, stack_timeout=o.connect_timeout,
        blocked_connection_timeout=o.blocked_connection_timeout, **extra)


class _Unanswered(Exception):
    """A connect that got no answer within ``connect_timeout``: not worth another
    try (``Link.run`` gives up at once; callers see :class:`BrokerUnavailable`)."""


def connect(o: AMQPOptions) -> pika.BlockingConnection:
    """A new connection, watched for silence, or :class:`BrokerUnavailable` naming
    the place (never the password) and the socket's own error."""
    try:
        return _connect(o)
    except _Unanswered as exc:
        raise BrokerUnavailable(str(exc)) from None


def _connect(o: AMQPOptions, heartbeat: int | None = None) -> pika.BlockingConnection:
    """:func:`connect`, raising :class:`_Unanswered` for a connect that timed out."""
    parameters = connection_parameters(o, heartbeat)
    try:
        conn = pika.BlockingConnection(parameters, _impl_class=OneWriteConnection)
    except ssl.SSLError as exc:  # pika lets a failed certificate check through as it is
        # (first: the check's error is a ValueError too)
        raise BrokerUnavailable(_tls_failed(o, _tls_refusal(exc) or str(exc))) from None
    except ValueError as exc:
        # pika checks a socket that has just connected with getpeername(), and
        # reports a peer that reset it as it opened (a proxy or load balancer with
        # no server behind it) as a ValueError raised while handling the socket's
        # OSError.  Its other ValueErrors (bad parameters) have no socket error.
        if not isinstance(exc.__context__, OSError):
            raise
        raise BrokerUnavailable(f"RabbitMQ at {o.place} is unreachable (reset as it "
                                f"connected: {exc.__context__.strerror})") from None
    except pika.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(
            f"RabbitMQ at {o.place} closed the connection at login: wrong credentials, "
            "or the node is stopping or starting") from None
    except (pika.exceptions.AMQPConnectionError, AMQPConnectorException) as exc:
        inner = _innermost(exc)
        if isinstance(inner, TimeoutError | AMQPConnectorStackTimeout):
            raise _Unanswered(
                f"RabbitMQ at {o.place} did not answer within {o.connect_timeout:g}s "
                "(connect_timeout): a dead path or a stalled node") from None
        refused = _tls_refusal(exc) if o.tls else None
        if refused:
            raise BrokerUnavailable(_tls_failed(o, refused)) from None
        raise BrokerUnavailable(f"RabbitMQ at {o.place} is unreachable "
                                f"({type(inner).__name__})") from None
    watch(conn)
    return conn


def _tls_failed(o: AMQPOptions, reason: str) -> str:
    return (f"RabbitMQ at {o.place}: TLS failed ({reason}); check broker_use_ssl (ca_certs: "
            "the CA that signed the server's certificate; certfile and keyfile: the client "
            "certificate a server that verifies peers asks for)")


_SSL_REASON = re.compile(r"\[SSL: [A-Z0-9_]+\] ([^(\]'\"]+)")
# Python's text for a TLS stream that ended without TLS's own goodbye (SSLEOFError).
_TLS_EOF = "EOF occurred in violation of protocol"
_TLS_EOF_REASON = ("the server closed the connection just after the handshake without "
                   "saying why, as a server that verifies peers does when the client "
                   "certificate is missing or not trusted")


def _tls_refusal(exc: BaseException) -> str | None:
    """OpenSSL's reason in a failed TLS connect, wherever pika wrapped it: a server
    that refuses the client's certificate says so only after the handshake, and
    pika then reports the lost stream as an ``IncompatibleProtocolError``.

    With TLS 1.3 that refusal is an alert the server sends as it closes; when
    the client reads the close first (a busy machine), no alert is left to
    name, only the stream's early end, which is then the reason given."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        found = _SSL_REASON.search(text)
        if found:
            return found.group(1).strip()
        if _TLS_EOF in text:
            return _TLS_EOF_REASON
        seen = seen.__cause__ or seen.__context__ or (
            seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None)
    return None


class Link:
    """A lazily opened connection with one confirm-mode channel."""

    def __init__(self, opts: AMQPOptions, on_drop: Callable[[], None] = lambda: None) -> None:
        self.opts = opts
        self.lock = threading.RLock()
        self.conn: pika.BlockingConnection | None = None
        self.channel: BlockingChannel | None = None
        self.generation = 0  # bumped whenever the connection is dropped
        # The heartbeat timeout asked for when the options set none (the consuming
        # link's follows the lease: ``_amqp.lease_heartbeat``); None: the server's.
        self.heartbeat: int | None = None
        self._on_drop = on_drop

    def chan(self) -> BlockingChannel:
        """The open channel, connecting first if there is none."""
        try:
            return self._chan()
        except _Unanswered as exc:
            raise BrokerUnavailable(str(exc)) from None

    def _chan(self) -> BlockingChannel:
        """:meth:`chan`, raising :class:`_Unanswered` for a connect that timed out."""
        if self.channel is None or not self.channel.is_open:
            self.drop()
            self.conn = _connect(self.opts, self.heartbeat)
            self.channel = self.conn.channel()
            Confirms.of(self.channel)
            # A channel the server closes between calls (consumer_timeout) is reported
            # here (pika's channel under the blocking wrapper); the next call only sees
            # "channel is closed".
            self.channel._impl.add_on_close_callback(lambda _ch, reason: explain_close(reason))
        return self.channel

    def drop(self) -> None:
        """Forget a broken connection (and what belonged to it: ``on_drop``)."""
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = self.channel = None
        self.generation += 1
        self._on_drop()

    def run(self, op: Callable[[BlockingChannel], T], attempts: int = 5) -> T:
        """Run ``op`` on the channel, reconnecting with backoff when the link fails.

        Only this link's failures are retried: a :class:`BrokerUnavailable` that
        ``op`` raises (from the other link) passes through."""
        with self.lock:
            for attempt in range(attempts):
                try:
                    ch = self._chan()
                except _Unanswered as exc:
                    raise BrokerUnavailable(str(exc)) from None
                except BrokerUnavailable:
                    if attempt == attempts - 1:
                        raise
                else:
                    try:
                        return op(ch)
                    except pika.exceptions.ConnectionBlockedTimeout:
                        self.drop()
                        raise self._blocked() from None
                    except LINK_ERRORS as exc:
                        _log.warning("RabbitMQ at %s: the connection broke (%s: %s); "
                                     "reconnecting", self.opts.place, type(exc).__name__,
                                     str(exc)[:200])
                        self.drop()
                    except pika.exceptions.ChannelClosedByBroker as exc:
                        self.drop()
                        explain_close(exc)
                        if _refused(exc):
                            raise refusal(self.opts, exc) from None
                if attempt < attempts - 1:
                    time.sleep(min(2.0, 0.1 * 2**attempt))
            raise BrokerUnavailable(f"RabbitMQ at {self.opts.place}: the connection kept "
                                    "failing")

    def _blocked(self) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"RabbitMQ at {self.opts.place} blocked publishing for "
            f"{self.opts.blocked_connection_timeout:g}s (a memory or disk alarm; "
            "broker_transport_options['blocked_connection_timeout']): the message was not "
            "confirmed, and may still be queued when the alarm clears")

    @contextlib.contextmanager
    def side_channel(self) -> Iterator[BlockingChannel]:
        """A channel of its own on this link's connection, under the lock, closed
        afterwards.  The connection failing under it (a dead path, a node going
        away) drops the link and raises :class:`BrokerUnavailable`, as ``run`` does."""
        with self.lock:
            self.run(lambda ch: None)
            assert self.conn is not None
            try:
                ch = self.conn.channel()
                Confirms.of(ch)
                try:
                    yield ch
                finally:
                    with contextlib.suppress(Exception):
                        ch.close()
            except LINK_ERRORS as exc:
                self.drop()
                raise BrokerUnavailable(f"RabbitMQ at {self.opts.place}: the connection broke "
                                        f"({type(exc).__name__}: {str(exc)[:200]})") from None
