"""The control-channel contract on Valkey (a ``redis://`` URL, issue 21):
pub/sub, as on Redis."""

from __future__ import annotations

import pytest

from .control_channel_contract import ControlChannelContract


class TestValkeyControlChannel(ControlChannelContract):
    @pytest.fixture
    def url(self, valkey_url: str) -> str:
        return valkey_url
