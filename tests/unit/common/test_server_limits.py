"""Stream limits of the server factory: keepalive options and the client-stream idle timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from fedprompt.errors import IdleTimeoutError
from fedprompt.server import channel_options, within_idle_timeout


async def _messages(*items: str, then_wait: asyncio.Event | None = None) -> AsyncIterator[str]:
    for item in items:
        yield item
    if then_wait is not None:
        await then_wait.wait()


@pytest.mark.asyncio
async def test_messages_pass_through_and_the_stream_ends() -> None:
    got = [m async for m in within_idle_timeout(_messages("a", "b"), idle_timeout_s=5, method="m")]
    assert got == ["a", "b"]


@pytest.mark.asyncio
async def test_a_silent_stream_raises_an_idle_timeout_after_its_messages() -> None:
    never = asyncio.Event()
    got: list[str] = []
    with pytest.raises(IdleTimeoutError, match=r"/svc/Upload: no message for 0\.05 s") as info:
        async for message in within_idle_timeout(
            _messages("a", then_wait=never), idle_timeout_s=0.05, method="/svc/Upload"
        ):
            got.append(message)
    assert got == ["a"]
    assert info.value.status_code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_keepalive_settings_reach_the_channel_options() -> None:
    options = dict(channel_options(keepalive_time_s=1.5, keepalive_timeout_s=0.25))
    assert options["grpc.keepalive_time_ms"] == 1500
    assert options["grpc.keepalive_timeout_ms"] == 250
    defaults = dict(channel_options())
    assert (defaults["grpc.keepalive_time_ms"], defaults["grpc.keepalive_timeout_ms"]) == (
        30_000,
        10_000,
    )
