"""A web process for test_transactional_enqueue.py: save an order and send its task in
one ``atomic()`` block, reporting each step on stdout, so the test can kill it anywhere.

Waits for ``commit`` on stdin before leaving the block, then stays alive until killed.
"""

from __future__ import annotations

import sys
import time

import django

django.setup()

from django.db import connection, transaction  # noqa: E402

import tests.django.proj  # noqa: E402, F401 - the project's app, as a web process has it
from tests.django.testapp.models import Order  # noqa: E402
from tests.django.testapp.tasks import add  # noqa: E402


def say(word: str) -> None:
    print(word, flush=True)


with transaction.atomic():
    Order.objects.create(number=sys.argv[1])
    result = add.delay(1, 2)
    say(f"written {result.id} {connection.connection.info.backend_pid}")
    sys.stdin.readline()
    say("committing")
say("committed")
while True:
    time.sleep(60)
