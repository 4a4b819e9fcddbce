"""The app the beat process tests start with ``python -m conveyor -A tests.integration.beat_app``.

Broker, lease and policy come from ``CONVEYOR_*`` variables (the CLI reads them);
the one entry's interval and queue from ``BEAT_TEST_INTERVAL`` / ``BEAT_TEST_QUEUE``.
"""

from __future__ import annotations

import os

from conveyor import Conveyor

app = Conveyor("beat_app")
app.conf.update(
    {
        "beat_schedule": {
            "tick": {
                "task": "beat_app.tick",
                "schedule": float(os.environ.get("BEAT_TEST_INTERVAL", "1")),
                "args": ("hello",),
                "options": {"queue": os.environ.get("BEAT_TEST_QUEUE", "beat-test")},
            },
        },
    },
    source="tests/integration/beat_app.py",
)


@app.task(name="beat_app.tick")
def tick(greeting: str) -> str:
    return greeting
