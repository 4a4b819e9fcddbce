"""On-commit sending in a Django project that does not install conveyor.contrib.django.

Celery's ``delay_on_commit`` needs no Django app: it notices Django by itself
(``celery/contrib/django/task.py``). Here the first on-commit send installs
the Django deferrer when Django's settings are configured. Run in a
subprocess: Django is configured once per process, and the test suite's own
Django settings install Conveyor's app.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["django.contrib.contenttypes"],
                   DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                          "NAME": ":memory:"}})
django.setup()
from django.db import transaction
from conveyor import Conveyor
app = Conveyor("no-app", broker="memory://no-app", set_as_current=False)

@app.task(name="t.noop")
def noop():
    return None

def ready():
    return sum(s.ready for s in app.broker.stats(["default"]))

with transaction.atomic():
    noop.delay_on_commit()
    inside = ready()
after_commit = ready()
try:
    with transaction.atomic():
        noop.delay_on_commit()
        raise RuntimeError("roll back")
except RuntimeError:
    pass
print(inside, after_commit, ready())
"""


def test_delay_on_commit_waits_for_the_commit_without_conveyors_django_app() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1", "1"]  # queued at commit, nothing for the rollback
