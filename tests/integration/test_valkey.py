"""Valkey (issue 21): what the ``valkey`` topology's contract, worker, canvas and
fault runs take for granted.

Those runs pass a ``redis://`` URL to Conveyor, so they would pass just as well
against a Redis that ``CONVEYOR_TEST_VALKEY_SERVER`` named by mistake: this
test checks the server is Valkey, of the build the binary says.  It also
checks Conveyor's handshake: its connections speak RESP2 (``conveyor/_redis.py``),
so redis-py never sends ``CLIENT MAINT_NOTIFICATIONS``, a Redis 8 command that
Valkey answers with an error (redis-py's RESP3 default sends it on every
connection and ignores the error); ``CLIENT SETINFO`` is accepted.
"""

from __future__ import annotations

from conveyor import Conveyor

from ..faults.harness import RedisServer
from ..valkey_server import valkey_version


def test_conveyor_talks_to_valkey_without_a_server_error(valkey_server: RedisServer,
                                                           valkey_url: str) -> None:
    admin = valkey_server.client()
    app = Conveyor("valkey-check", broker=valkey_url, set_as_current=False)
    try:
        info = admin.info("server")
        assert info["server_name"] == "valkey"
        assert info["valkey_version"] == valkey_version(valkey_server.binary)
        admin.config_resetstat()
        sent = app.send_task("tests.valkey.nothing", [1])
        assert app.broker.stats(["default"])[0].ready == 1
        assert app.AsyncResult(sent.id).state == "PENDING"
        mine = admin.client_id()
        conveyor = [c for c in admin.client_list() if int(c["id"]) != mine]
        assert conveyor, "Conveyor's connections are not listed"
        assert {(c["resp"], c["lib-name"]) for c in conveyor} == {("2", "redis-py")}
        # A script's first EVALSHA on a fresh server is answered NOSCRIPT, then loaded.
        errors = {name for name in admin.info("errorstats") if name != "errorstat_NOSCRIPT"}
        assert not errors, admin.info("errorstats")
    finally:
        app.close()
        admin.close()
