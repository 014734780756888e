"""Pytest fixtures around `FakeHub`; import them from conftest.py (`from fixtures_hub import fake_hub, ...`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from hub_server import FakeHub

FAKE_HUB_TOKEN = "hf_test_token_123"


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A started `FakeHub` accepting the token `FAKE_HUB_TOKEN` ("hf_test_token_123"); stopped after the test.

    conftest.py sets HF_HUB_OFFLINE=1, which makes huggingface_hub refuse every request (it is read once, at
    import): for the duration of the test, offline mode is switched off so that the client can reach the fake
    server. Always pass `endpoint=hub.endpoint` so nothing is sent to the real Hub.
    """
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with FakeHub(tokens={FAKE_HUB_TOKEN}) as hub:
        yield hub


class _NoSleepTime:
    """Stand-in for the `time` module that records `sleep` calls instead of sleeping."""

    def __init__(self, sleeps: list[float]) -> None:
        self._sleeps = sleeps

    def sleep(self, seconds: float) -> None:
        self._sleeps.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def hub_no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make huggingface_hub's retry back-off instant (it sleeps 1+2+4+8+8 s over 5 retries on 5xx/network errors).

    Patches only the `time` name seen by `huggingface_hub.utils._http` and `huggingface_hub.file_download`;
    returns the list of sleep durations the client asked for (one entry per retry).
    """
    import huggingface_hub.file_download
    import huggingface_hub.utils._http

    sleeps: list[float] = []
    fake_time = _NoSleepTime(sleeps)
    monkeypatch.setattr(huggingface_hub.utils._http, "time", fake_time)
    monkeypatch.setattr(huggingface_hub.file_download, "time", fake_time)
    return sleeps
