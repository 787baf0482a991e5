"""One factory for fedprompt's aio gRPC servers and channels, and the shared interceptors.

Every server gets the same message limits, keepalive settings, the standard
``grpc.health.v1`` service and the :class:`ErrorMappingInterceptor`, which is the only
place where domain errors become gRPC status codes. Server processes announce the port they
bound with :func:`announce_port` and stop on SIGTERM/SIGINT through
:func:`stop_event_on_signals`.

Dead and idle peers. A server pings every connection (HTTP/2 keepalive) every
``keepalive_time_s`` and closes it when a ping is not answered within
``keepalive_timeout_s``: every call on it is then cancelled, so a server stream (a task
stream, which is silent between rounds by design) whose peer is gone ends within about
the sum of the two. A client stream (an upload) must also keep sending: with
``stream_idle_timeout_s``, one whose next message does not arrive within that many seconds
is ended with ``DEADLINE_EXCEEDED`` (:class:`ClientStreamIdleInterceptor`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedprompt.errors import FedPromptError, IdleTimeoutError

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Largest chunk of payload bytes in one message.
MAX_CHUNK_BYTES = 1 * MIB
#: Default receive limit: one chunk plus protobuf framing, with headroom. Large payloads stream.
DEFAULT_MAX_MESSAGE_BYTES = 2 * MIB
CLIENT_ID_METADATA_KEY = "x-fedprompt-client-id"
#: Seconds between HTTP/2 keepalive pings on an otherwise quiet connection.
DEFAULT_KEEPALIVE_TIME_S = 30.0
#: Seconds a keepalive ping may go unanswered before the connection counts as dead.
DEFAULT_KEEPALIVE_TIMEOUT_S = 10.0
#: gRPC channel argument naming the host a server's certificate is verified against.
TARGET_NAME_OVERRIDE = "grpc.ssl_target_name_override"

#: A method handler of any request and response type (what interceptors see).
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
#: The aio context of a call whose message types the caller does not know.
AnyContext: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
#: An aio behaviour answering with one response (unary-unary, stream-unary).
UnaryBehavior: TypeAlias = Callable[[Any, AnyContext], Awaitable[Any]]
#: An aio behaviour answering with a response stream (unary-stream, stream-stream).
StreamingBehavior: TypeAlias = Callable[[Any, AnyContext], AsyncIterator[Any]]
#: Wraps the request iterator of a client-streaming call.
RequestIterWrapper: TypeAlias = Callable[[AsyncIterator[Any], AnyContext], AsyncIterator[Any]]

_R = TypeVar("_R")


def channel_options(
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    keepalive_time_s: float = DEFAULT_KEEPALIVE_TIME_S,
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S,
) -> list[tuple[str, int]]:
    """gRPC channel arguments shared by servers and clients.

    Parameters
    ----------
    max_message_bytes
        Limit for one received and one sent message.
    keepalive_time_s
        Interval of HTTP/2 keepalive pings (a server pings each of its connections).
    keepalive_timeout_s
        A ping unanswered this long closes the connection and cancels its calls.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", max(1, round(keepalive_time_s * 1000))),
        ("grpc.keepalive_timeout_ms", max(1, round(keepalive_timeout_s * 1000))),
        # any unanswered ping ends the connection as late as a keepalive ping would: an
        # unanswered flow-control (BDP) ping otherwise blocks keepalive pings (one ping in
        # flight at a time) and holds a dead peer's calls for gRPC's default 60 s
        ("grpc.http2.ping_timeout_ms", max(1, round(keepalive_timeout_s * 1000))),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def guard_handler(handler: Handler, check: Callable[[AnyContext], Awaitable[None]]) -> Handler:
    """Return a copy of ``handler`` that awaits ``check(context)`` before every call.

    ``check`` aborts the call (``context.abort``) to refuse it; it runs before the servicer
    sees a request, for single and streamed responses alike.
    """

    def unary(behavior: UnaryBehavior) -> UnaryBehavior:
        async def call(request: Any, context: AnyContext) -> Any:
            await check(context)
            return await behavior(request, context)

        return call

    def streaming(behavior: StreamingBehavior) -> StreamingBehavior:
        async def call(request: Any, context: AnyContext) -> AsyncIterator[Any]:
            await check(context)
            async for response in behavior(request, context):
                yield response

        return call

    return wrap_handler(handler, unary=unary, streaming=streaming)


def wrap_handler(
    handler: Handler,
    *,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    streaming: Callable[[StreamingBehavior], StreamingBehavior],
    request_iter: RequestIterWrapper | None = None,
    unary_request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """Return a copy of ``handler`` whose behaviour is wrapped.

    ``unary`` wraps behaviours that return one response, ``streaming`` those that yield
    responses; ``request_iter`` (optional) wraps client-streamed request iterators;
    ``unary_request_deserializer`` (optional) replaces the deserializer of single requests.
    """
    single_deserializer = unary_request_deserializer or handler.request_deserializer

    def wrap_requests(
        behavior: Callable[[Any, AnyContext], _R],
    ) -> Callable[[Any, AnyContext], _R]:
        if request_iter is None:
            return behavior

        def call(requests: AsyncIterator[Any], context: AnyContext) -> _R:
            return behavior(request_iter(requests, context), context)

        return call

    # grpc-stubs type a handler's behaviours as those of a sync server; on an aio server
    # they are coroutine functions (one response) or async generator functions (a stream).
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(cast(UnaryBehavior, handler.unary_unary)),
            request_deserializer=single_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            streaming(cast(StreamingBehavior, handler.unary_stream)),
            request_deserializer=single_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            unary(wrap_requests(cast(UnaryBehavior, handler.stream_unary))),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            streaming(wrap_requests(cast(StreamingBehavior, handler.stream_stream))),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


async def _abort_for(exc: BaseException, context: AnyContext, method: str) -> NoReturn:
    """Abort the call with the status that ``exc`` maps to, logging it once."""
    if isinstance(exc, FedPromptError):
        logger.info("%s -> %s: %s", method, exc.status_code.name, exc.message)
        await context.abort(exc.status_code, exc.message)
    if isinstance(exc, DecodeError):  # a streamed request message that is not valid protobuf
        logger.info("%s -> INVALID_ARGUMENT: malformed request message", method)
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message in {method}"
        )
    logger.exception("%s failed with an unexpected error", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method} (see server log)")


class _Malformed:
    """Stands for a single request whose bytes are not valid protobuf (refused unread)."""

    def ByteSize(self) -> int:  # noqa: N802 - the protobuf message method outer interceptors call
        """Nothing of it is counted."""
        return 0


_MALFORMED = _Malformed()


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Translate :class:`FedPromptError` into status codes; unknown errors into ``INTERNAL``."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Wrap the method handler so that escaping exceptions become status codes."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        deserialize = handler.request_deserializer

        def tolerant_deserialize(data: bytes) -> Any:
            # grpc would log a traceback and answer UNKNOWN; the call answers INVALID_ARGUMENT
            try:
                return deserialize(data) if deserialize is not None else data
            except DecodeError:
                return _MALFORMED

        async def refuse_malformed(request: Any, context: AnyContext) -> None:
            if request is _MALFORMED:
                await _abort_for(DecodeError(), context, method)

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def call(request: Any, context: AnyContext) -> Any:
                await refuse_malformed(request, context)
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the translator of last resort
                    await _abort_for(exc, context, method)

            return call

        def streaming(behavior: StreamingBehavior) -> StreamingBehavior:
            async def call(request: Any, context: AnyContext) -> AsyncIterator[Any]:
                await refuse_malformed(request, context)
                try:
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the translator of last resort
                    await _abort_for(exc, context, method)

            return call

        return wrap_handler(
            handler,
            unary=unary,
            streaming=streaming,
            unary_request_deserializer=tolerant_deserialize,
        )


async def within_idle_timeout(
    requests: AsyncIterator[_R], *, idle_timeout_s: float, method: str
) -> AsyncIterator[_R]:
    """Yield the messages of a client stream; raise IdleTimeoutError after a silent gap.

    Parameters
    ----------
    requests
        The call's request iterator.
    idle_timeout_s
        Longest wait for the next message (the first included).
    method
        The method's name, for the error message.
    """
    iterator = aiter(requests)
    while True:
        try:
            async with asyncio.timeout(idle_timeout_s):
                message = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise IdleTimeoutError(
                f"{method}: no message for {idle_timeout_s:g} s; the stream was closed"
            ) from None
        yield message


class ClientStreamIdleInterceptor(grpc.aio.ServerInterceptor):
    """End client-streaming calls whose next message does not come within a timeout.

    The servicer sees :class:`~fedprompt.errors.IdleTimeoutError` raised from its request
    iterator (so it frees what the call holds) and the peer gets ``DEADLINE_EXCEEDED``.

    Parameters
    ----------
    idle_timeout_s
        Longest silence between two messages of a client stream.
    """

    def __init__(self, idle_timeout_s: float) -> None:
        if idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be positive")
        self._idle_timeout_s = idle_timeout_s

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Wrap the request iterator of a client-streaming method; leave others alone."""
        handler = await continuation(handler_call_details)
        if handler is None or not handler.request_streaming:
            return handler
        method = handler_call_details.method
        timeout_s = self._idle_timeout_s

        def requests(iterator: AsyncIterator[Any], context: AnyContext) -> AsyncIterator[Any]:
            return within_idle_timeout(iterator, idle_timeout_s=timeout_s, method=method)

        return wrap_handler(
            handler, unary=lambda b: b, streaming=lambda b: b, request_iter=requests
        )


@dataclass(frozen=True)
class ServerHandle:
    """A started server with the port it bound and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    #: The services reported by the health service (besides the server as a whole, "").
    service_names: tuple[str, ...] = ()

    async def set_serving(self, serving: bool) -> None:
        """Report every service (and the server as a whole) SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in (*self.service_names, ""):
            await self.health.set(name, status)

    async def stop(self, grace: float = 2.0) -> None:
        """Mark every service NOT_SERVING, then stop with a grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    *,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    address: str,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    credentials: grpc.ServerCredentials | None = None,
    keepalive_time_s: float = DEFAULT_KEEPALIVE_TIME_S,
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S,
    stream_idle_timeout_s: float | None = None,
) -> ServerHandle:
    """Build, bind and start an aio server with health checking and error mapping.

    Parameters
    ----------
    register
        Adds the service's servicers to the server.
    service_names
        Fully qualified service names reported SERVING by ``grpc.health.v1``.
    address
        ``host:port``; port 0 picks a free port.
    interceptors
        Extra interceptors, run outside the error mapping.
    max_message_bytes
        Receive/send limit of one message.
    credentials
        TLS credentials (see :func:`fedprompt.tls.server_credentials`); None binds a
        plaintext port.
    keepalive_time_s, keepalive_timeout_s
        The server pings every connection this often and closes one whose ping is not
        answered in time, cancelling its calls (a dead peer's streams end).
    stream_idle_timeout_s
        End a client stream whose next message does not arrive within this many seconds
        (``DEADLINE_EXCEEDED``); None: no limit.
    """
    idle = (
        [ClientStreamIdleInterceptor(stream_idle_timeout_s)]
        if stream_idle_timeout_s is not None
        else []
    )
    server = grpc.aio.server(
        interceptors=[*interceptors, *idle, ErrorMappingInterceptor()],
        options=channel_options(
            max_message_bytes=max_message_bytes,
            keepalive_time_s=keepalive_time_s,
            keepalive_timeout_s=keepalive_timeout_s,
        ),
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    for name in (*service_names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info(
        "serving %s on port %d (%s)",
        ", ".join(service_names),
        port,
        "plaintext" if credentials is None else "mutual TLS",
    )
    return ServerHandle(
        server=server, port=port, health=health_servicer, service_names=tuple(service_names)
    )


def announce_port(handle: ServerHandle) -> None:
    """Print ``LISTENING <port>`` on stdout (flushed) so that a parent process can read it.

    The ``fedprompt up`` launcher and the process tests parse this line to learn the port a
    server bound when it was asked for port 0.
    """
    print(f"LISTENING {handle.port}", flush=True)


def stop_event_on_signals(
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> asyncio.Event:
    """Return an event that is set when the process receives one of ``signals``.

    The handlers are installed on the running event loop (so call this from a coroutine)
    and stay until the loop closes; a server awaits the event, then stops gracefully.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    return stop


def create_channel(
    target: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """Open an aio channel to ``target`` with fedprompt's shared options.

    ``credentials`` (see :func:`fedprompt.tls.channel_credentials`) make it a TLS channel;
    None opens a plaintext one. ``server_name`` (TLS only) is the name the server's
    certificate must carry whatever address ``target`` names (gRPC's target-name
    override); None verifies the dialled host name, as a browser would.
    """
    options: list[tuple[str, int | str]] = [*channel_options(max_message_bytes=max_message_bytes)]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    if server_name:
        options.append((TARGET_NAME_OVERRIDE, server_name))
    return grpc.aio.secure_channel(target, credentials, options=options)
