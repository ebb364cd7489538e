"""Shared test setup."""

import pytest

from regnet_kernels import dispatch


@pytest.fixture(autouse=True)
def _fresh_resolved_calls():
    """Each test resolves its public op calls anew, as a new process would: tests change backend
    settings (monkeypatched module flags, fake route timers) that a call resolved in an earlier
    test would not see (dispatch.resolve_once)."""
    dispatch.clear_resolved()
    yield
    dispatch.clear_resolved()
