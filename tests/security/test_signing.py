"""Pickle's risk is announced, and signed messages keep broker writers out (issue 15, finding 5).

A real worker process (threads and prefork pools) with a signing key
serves a queue on SQLite and Redis.  Bodies injected straight into the
broker without the key (plain JSON calling a registered task, a pickle
payload that would run a shell command when unpickled, a body signed with
another key) never run: the files they would create stay absent, and each
is dead-lettered with the reason.  A message sent by an app holding the key
runs, so the test can tell "refused" from "nothing ran at all".

Celery: ``celery/security/serialization.py`` (the ``auth`` serializer) signs
each body and refuses unsigned ones before decoding; Celery's worker warns
about pickle only when running as root (``celery/platforms.py``
``check_privileges``); here the warning is given whenever pickle is accepted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor._config import Settings
from conveyor._message import Message, new_id
from conveyor._serialization import PICKLE
from conveyor._signing import SignatureError, key_for, pickle_warning, sign, verify
from conveyor.brokers import Envelope
from conveyor.exceptions import ConfigurationError
from tests.integration.processes import stop, wait_for

KEY = "k" * 16 + "-signing-key-for-tests"
QUEUE = "signed"
APP_SOURCE = """
from pathlib import Path

from conveyor import Conveyor

app = Conveyor("signapp")
app.conf.update({"accept_content": ["json", "pickle"]})


@app.task(name="signapp.touch")
def touch(path):
    Path(path).write_text("ran")
    return path
"""


def test_sign_and_verify_round_trip() -> None:
    body = Message(id="a", task="t", args=(1,)).encode()
    signed = sign(body, KEY.encode())
    assert signed.startswith(body[:-1]) and verify(signed, KEY.encode()) == body
    with pytest.raises(SignatureError, match="not signed"):
        verify(body, KEY.encode())
    with pytest.raises(SignatureError, match="does not match"):
        verify(signed.replace(b'"args":[1]', b'"args":[2]'), KEY.encode())
    with pytest.raises(SignatureError, match="does not match"):
        verify(sign(body, b"another-key-of-16-bytes"), KEY.encode())
    # A signed body is still a JSON message for tools that do not verify.
    assert Message.decode(signed, ["json"]).args == (1,)


def test_short_or_doubled_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="at least 16"):
        key_for(Settings(message_signing_key="short"))
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert key_for(Settings(message_signing_key_file=str(key_file))) == KEY.encode()
    with pytest.raises(ConfigurationError, match="not both"):
        key_for(Settings(message_signing_key=KEY, message_signing_key_file=str(key_file)))


def test_the_pickle_warning_names_who_can_run_code() -> None:
    assert pickle_warning(Settings()) is None
    text = pickle_warning(Settings(accept_content=["json", "pickle"])) or ""
    assert "write to the broker can run any code" in text and "message_signing_key" in text
    both = pickle_warning(Settings(accept_content=["json"],
                                   result_accept_content=["application/x-python-serialize"]))
    assert both is not None and "result store" in both


class Evil:
    """Unpickling this runs a shell command: what a broker writer sends when pickle is on."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.target}",))


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(params=["threads", "prefork"])
def worker(url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    (tmp_path / "signapp.py").write_text(textwrap.dedent(APP_SOURCE))
    log = tmp_path / "worker.log"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), CONVEYOR_BROKER_URL=url,
               CONVEYOR_MESSAGE_SIGNING_KEY=KEY)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "conveyor", "-A", "signapp", "worker",
                                 "-P", request.param, "-c", "2", "-Q", QUEUE], cwd=tmp_path,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: " ready: " in log.read_text(), 60, "the worker to be ready")
        yield log
    finally:
        stop(proc, signal.SIGTERM)


def _inject(client: Conveyor, body: bytes) -> str:
    message_id = new_id()
    client.broker.enqueue(Envelope(message_id, QUEUE, body))
    return message_id


def test_unsigned_messages_never_run_and_are_dead_lettered(worker: Path, url: str,
                                                           tmp_path: Path) -> None:
    outsider = Conveyor("outsider", broker=url, set_as_current=False)
    plain, pickled, forged = (tmp_path / n for n in ("plain", "pickled", "forged"))
    bodies = {
        "unsigned JSON": Message(id=new_id(), task="signapp.touch", args=(str(plain),),
                                 queue=QUEUE).encode(),
        "pickle payload": Message(id=new_id(), task="signapp.touch", args=(Evil(pickled),),
                                  queue=QUEUE, content_type=PICKLE).encode(),
        "wrong key": sign(Message(id=new_id(), task="signapp.touch", args=(str(forged),),
                                  queue=QUEUE).encode(), b"not-the-key-but-long-enough"),
    }
    for body in bodies.values():
        _inject(outsider, body)

    insider = Conveyor("insider", broker=url, set_as_current=False)
    insider.conf.update({"message_signing_key": KEY})
    good = tmp_path / "good"
    result = insider.send_task("signapp.touch", [str(good)], queue=QUEUE)
    assert result.get(timeout=60) == str(good) and good.read_text() == "ran"

    wait_for(lambda: len(outsider.broker.dead_letters(QUEUE)) == len(bodies), 60,
             "the three injected messages to be dead-lettered")
    reasons = sorted(d.reason for d in outsider.broker.dead_letters(QUEUE))
    assert sum("is not signed" in r for r in reasons) == 2, reasons
    assert sum("does not match" in r for r in reasons) == 1, reasons
    assert not plain.exists() and not pickled.exists() and not forged.exists()
    log = worker.read_text()
    assert log.count("allow pickle") == 1 and "unsigned messages are refused" in log
    outsider.close()
    insider.close()


def test_beat_warns_once_when_pickle_is_accepted(tmp_path: Path) -> None:
    """Beat sends messages too: it names the risk at start, once."""
    (tmp_path / "signapp.py").write_text(textwrap.dedent(APP_SOURCE))
    log = tmp_path / "beat.log"
    env = dict(os.environ, PYTHONPATH=str(tmp_path),
               CONVEYOR_BROKER_URL=f"sqlite:///{tmp_path / 'b.db'}")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "conveyor", "-A", "signapp", "beat"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: "beat" in log.read_text() and "starting" in log.read_text(), 60,
                 "beat to start")
    finally:
        stop(proc, signal.SIGTERM)
    text = log.read_text()
    assert text.count("allow pickle") == 1, text
    assert "anyone who can write to the broker can run any code" in text
