"""The ``limits`` section of the coordinator config: defaults and cross-field rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedprompt_coordinator.config import GIB, CoordinatorConfig, ResourceLimits


def test_defaults_bound_every_resource() -> None:
    config = CoordinatorConfig()
    limits = config.limits
    assert limits.upload_idle_timeout_s == 60.0
    assert (limits.keepalive_time_s, limits.keepalive_timeout_s) == (30.0, 10.0)
    assert limits.max_spool_bytes == 16 * GIB
    assert limits.max_buffered_upload_bytes == 256 * 1024**2
    # the initial model is bounded like any update unless configured tighter
    assert config.max_initial_model_bytes == config.max_update_bytes
    tighter = CoordinatorConfig(limits=ResourceLimits(max_initial_model_bytes=1024))
    assert tighter.max_initial_model_bytes == 1024


def test_the_spool_must_hold_one_largest_upload() -> None:
    with pytest.raises(ValidationError, match="max_spool_bytes"):
        CoordinatorConfig(limits=ResourceLimits(max_spool_bytes=GIB))
    with pytest.raises(ValidationError, match="max_spool_bytes"):
        CoordinatorConfig(
            max_update_bytes=1024,
            limits=ResourceLimits(max_spool_bytes=2048, max_initial_model_bytes=4096),
        )
    ok = CoordinatorConfig(max_update_bytes=1024, limits=ResourceLimits(max_spool_bytes=1024))
    assert ok.limits.max_spool_bytes == 1024


@pytest.mark.parametrize(
    "field", ["upload_idle_timeout_s", "keepalive_time_s", "keepalive_timeout_s"]
)
def test_timeouts_must_be_positive(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ResourceLimits(**{field: 0})
