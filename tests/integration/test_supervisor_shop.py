"""Issue 10 on the example project: ``examples/shop`` under a real ``supervisord``.

The Supervisor config comes from ``conveyor._deploy`` for the shop as its
operators would generate it (a worker per queue, beat with the database
scheduler) plus a stray second beat program.  On SQLite and on Redis: every
program starts, a SIGKILLed worker is restarted with nothing lost, and the
two beats send each tick of a 1-second database schedule once.
"""

from __future__ import annotations

import getpass
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor._deploy import DeploySpec, QueueWorker, supervisor_config, supervisord_main_config
from conveyor._message import Message

from .processes import ROOT, wait_for
from .test_supervisor import Supervisor

SHOP = ROOT / "examples" / "shop"
TICK_QUEUE = "ticks"  # no worker serves it: the test reads the ticks beat sent


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url"))


def shop_env(url: str, var: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DJANGO_SETTINGS_MODULE": "shop.settings", "SHOP_VAR": str(var),
                "CONVEYOR_BROKER_URL": url, "CONVEYOR_BROKER_LEASE_TIMEOUT": "3",
                "CONVEYOR_BEAT_LEASE_TIMEOUT": "2", "PYTHONPATH": str(ROOT)})
    env.pop("CONVEYOR_RESULT_BACKEND", None)
    return env


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=SHOP, env=env, check=True,
                   capture_output=True, timeout=120)


@pytest.fixture
def shop(url: str, tmp_path: Path) -> Iterator[tuple[Supervisor, dict[str, str]]]:
    var = tmp_path / "var"
    (var / "logs").mkdir(parents=True)
    env = shop_env(url, var)
    manage(env, "migrate", "--verbosity", "0")
    manage(env, "shell", "-c",
           "from conveyor.contrib.django.models import IntervalSchedule, PeriodicTask;"
           "every = IntervalSchedule.objects.create(every=1, period='seconds');"
           f"PeriodicTask.objects.create(name='tick', task='newsletter.tasks.send_daily_digest',"
           f" interval=every, queue='{TICK_QUEUE}')")
    common = {"app": "shop", "directory": str(SHOP), "venv": sys.prefix,
              "log_dir": str(var / "logs"), "shutdown_timeout": 20.0, "user": getpass.getuser(),
              "beat_scheduler": "conveyor.contrib.django.schedulers:DatabaseScheduler"}
    workers = (QueueWorker("default", 1), QueueWorker("orders", 1), QueueWorker("reports", 1))
    main = DeploySpec(workers=workers, beat=True, name="shop", **common)
    stray = DeploySpec(workers=(), beat=True, name="stray", **common)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(supervisord_main_config(main, str(tmp_path), str(tmp_path / "sd.pid"),
                                            str(tmp_path / "sd.log"), str(tmp_path / "sd.sock"))
                    + "\n" + supervisor_config(stray))
    sup = Supervisor(conf, env)
    try:
        yield sup, env
    finally:
        sup.close()


def succeeded(var: Path, ids: list[str]) -> int:
    with sqlite3.connect(var / "shop.sqlite3") as db:
        [table] = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '%taskresult'")]
        marks = ",".join("?" * len(ids))
        [(count,)] = db.execute(f"SELECT count(*) FROM {table} WHERE status='SUCCESS' "
                                f"AND task_id IN ({marks})", ids).fetchall()
        return int(count)


def test_the_shop_under_supervisor(shop: tuple[Supervisor, dict[str, str]], url: str) -> None:
    sup, env = shop
    var = Path(env["SHOP_VAR"])
    names = {"shop:shop-worker-default", "shop:shop-worker-orders", "shop:shop-worker-reports",
             "shop:shop-beat", "stray:stray-beat"}
    wait_for(lambda: sup.status() == dict.fromkeys(names, "RUNNING"), 90,
             "every program to be RUNNING", interval=0.5)
    client = Conveyor("client", broker=url, set_as_current=False)

    ids = [client.send_task("accounts.tasks.cleanup_expired_sessions", queue="default").id
           for _ in range(30)]
    old = sup.pid("shop:shop-worker-default")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: sup.pid("shop:shop-worker-default") not in (0, old), 60,
             "Supervisor to restart the worker", interval=0.5)
    wait_for(lambda: succeeded(var, ids) == 30, 90, "all 30 tasks to succeed", interval=0.5)

    # Both beats run side by side; wait for a handful of ticks, then count them.
    wait_for(lambda: client.broker.stats([TICK_QUEUE])[0].ready >= 5, 60, "5 ticks")
    ticks = drain_ticks(client)
    counted = Counter(ticks)
    assert len(ticks) >= 5, ticks
    assert all(n == 1 for n in counted.values()), f"a tick was sent twice: {counted}"
    client.close()


def drain_ticks(client: Conveyor) -> list[str]:
    ticks: list[str] = []
    while got := client.broker.reserve([TICK_QUEUE], 100, lease=60, timeout=0):
        ticks += [Message.decode(d.body, ["json"]).headers["beat_tick"] for d in got]
        client.broker.ack(got)
    return ticks
