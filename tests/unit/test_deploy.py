"""Deployment file generation: each output read back the way its consumer reads it.

A value that survives the round trip through supervisord's, systemd's or
compose's own parsing rules is a value the deployed process will really see;
that is the property worth testing, more than the exact text.
"""

from __future__ import annotations

import configparser
import getpass
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor._deploy import (
    MONITOR_AUTH_FLAG,
    STOP_MARGIN_SECONDS,
    DeployError,
    DeploySpec,
    QueueWorker,
    docker_compose,
    parse_env,
    parse_queue_spec,
    regenerate_command,
    stop_timeout,
    supervisor_config,
    supervisord_main_config,
    systemd_units,
)
from conveyor.exceptions import ConveyorError

# Quotes, a percent sign, a comma, a dollar and a backslash: each means
# something to at least one of the three formats.
TRICKY = 'say "hi", 100% $HOME \\n'


def make_spec(**overrides: object) -> DeploySpec:
    values: dict[str, object] = {
        "app": "myproject",
        "workers": (parse_queue_spec("default:4"), parse_queue_spec("default,orders:2")),
        "beat": True,
        "beat_scheduler": "conveyor.contrib.django.schedulers:DatabaseScheduler",
        "monitor": True,
        "user": "app",
        "directory": "/srv/myproject",
        "venv": "/srv/myproject/.venv",
        "env": (("DJANGO_SETTINGS_MODULE", "myproject.settings"), ("TRICKY", TRICKY)),
        "shutdown_timeout": 45.5,
    }
    values.update(overrides)
    return DeploySpec(**values)  # type: ignore[arg-type]


# --- parsing command-line items -------------------------------------------


@pytest.mark.parametrize(
    ("text", "queue", "concurrency"),
    [
        ("default:4", "default", 4),
        ("orders", "orders", 1),
        ("default,orders:2", "default,orders", 2),
        (" emails : 3 ", "emails", 3),
        ("a.b-c_d:1", "a.b-c_d", 1),
    ],
)
def test_parse_queue_spec(text: str, queue: str, concurrency: int) -> None:
    assert parse_queue_spec(text) == QueueWorker(queue=queue, concurrency=concurrency)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no queue name"),
        (":4", "no queue name"),
        ("default:", "whole number"),
        ("default:four", "whole number"),
        ("default:4:5", "whole number"),
        ("default:0", "at least 1"),
        ("default:-2", "at least 1"),
        ("a,,b:2", "bad queue name"),
        ("bad queue:2", "bad queue name"),
        ("default,default:2", "listed twice"),
    ],
)
def test_parse_queue_spec_names_the_bad_text(text: str, reason: str) -> None:
    with pytest.raises(DeployError) as info:
        parse_queue_spec(text)
    assert repr(text) in str(info.value)
    assert reason in str(info.value)


def test_deploy_error_is_a_value_error_and_a_conveyor_error() -> None:
    assert issubclass(DeployError, ValueError)
    assert issubclass(DeployError, ConveyorError)


def test_queue_worker_properties() -> None:
    worker = parse_queue_spec("default,orders:2")
    assert worker.queues == ("default", "orders")
    assert worker.label == "default-orders"
    assert parse_queue_spec(worker.as_spec()) == worker


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("KEY=VALUE", ("KEY", "VALUE")),
        ("URL=redis://h:1/0?a=b", ("URL", "redis://h:1/0?a=b")),
        ("EMPTY=", ("EMPTY", "")),
        ("_x1=", ("_x1", "")),
    ],
)
def test_parse_env(text: str, expected: tuple[str, str]) -> None:
    assert parse_env(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("NOVALUE", "expected KEY=VALUE"),
        ("=value", "not a variable name"),
        ("1KEY=value", "not a variable name"),
        ("BAD-KEY=value", "not a variable name"),
        ("KEY=two\nlines", "control character"),
    ],
)
def test_parse_env_names_the_bad_text(text: str, reason: str) -> None:
    with pytest.raises(DeployError) as info:
        parse_env(text)
    assert repr(text) in str(info.value)
    assert reason in str(info.value)


# --- spec validation ------------------------------------------------------


def test_nothing_to_deploy_is_refused() -> None:
    with pytest.raises(DeployError, match="nothing to deploy"):
        DeploySpec(app="myproject", workers=())


def test_beat_alone_is_enough() -> None:
    spec = DeploySpec(app="myproject", workers=(), beat=True, directory="/srv", user="app")
    assert list(systemd_units(spec)) == ["conveyor-beat.service", "conveyor.target"]


def test_duplicate_worker_names_are_refused() -> None:
    with pytest.raises(DeployError, match="'default:4' and 'default:2'"):
        DeploySpec(app="p", workers=(QueueWorker("default", 4), QueueWorker("default", 2)))


def test_worker_names_that_collide_after_joining_are_refused() -> None:
    with pytest.raises(DeployError, match="'a-b'"):
        DeploySpec(app="p", workers=(QueueWorker("a-b"), QueueWorker("a,b")))


def test_zero_concurrency_is_refused() -> None:
    with pytest.raises(DeployError, match=r"concurrency for 'default' must be at least 1, got 0"):
        QueueWorker("default", 0)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"loglevel": "LOUD"}, "bad loglevel 'LOUD'"),
        ({"app": "my project"}, "bad app 'my project'"),
        ({"name": "no/slash"}, "bad name"),
        ({"monitor_port": 0}, "bad monitor_port 0"),
        ({"shutdown_timeout": -1.0}, "shutdown_timeout"),
        ({"shutdown_timeout": float("inf")}, "shutdown_timeout"),
        ({"beat": False}, "beat_scheduler is set but beat is not enabled"),
        ({"env": (("A", "1"), ("A", "2"))}, "'A' given twice"),
        ({"env": (("CONVEYOR_MONITOR_AUTH", "u:p"),)}, "credentials"),
        ({"directory": "/srv/\nx"}, "directory contains a control character"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(DeployError, match=re.escape(match)):
        make_spec(**overrides)


def test_stop_timeout_outlasts_the_worker_shutdown() -> None:
    assert stop_timeout(make_spec(shutdown_timeout=60.0)) == 60 + STOP_MARGIN_SECONDS
    assert stop_timeout(make_spec(shutdown_timeout=45.5)) == 46 + STOP_MARGIN_SECONDS
    assert stop_timeout(make_spec(shutdown_timeout=0)) == STOP_MARGIN_SECONDS


# --- headers --------------------------------------------------------------


def all_outputs(spec: DeploySpec) -> dict[str, str]:
    files = {"supervisor.conf": supervisor_config(spec), "compose.yaml": docker_compose(spec)}
    files["supervisord.conf"] = supervisord_main_config(spec, "/c", "/c/p", "/c/l", "/c/s")
    files.update(systemd_units(spec))
    return files


def test_every_file_starts_with_a_generated_by_header() -> None:
    spec = make_spec()
    for name, text in all_outputs(spec).items():
        first = text.splitlines()[0]
        assert first.startswith("# Generated by `conveyor deploy "), name
        assert "conveyor -A myproject deploy" in text, name


def test_regenerate_command_carries_the_options() -> None:
    spec = make_spec(loglevel="DEBUG", monitor_port=8080)
    words = shlex.split(regenerate_command(spec, "systemd"))
    assert words[:5] == ["conveyor", "-A", "myproject", "deploy", "systemd"]
    assert "--queue=default:4" in words
    assert "--queue=default,orders:2" in words
    assert "--beat" in words and "--monitor" in words
    assert "--loglevel=DEBUG" in words and "--monitor-port=8080" in words
    assert f"--env=TRICKY={TRICKY}" in words
    assert not any(word.startswith("--log-dir") for word in words)  # defaults are left out


def test_no_credentials_are_written_anywhere() -> None:
    for name, text in all_outputs(make_spec()).items():
        assert "--basic-auth " not in text and "--basic-auth=" not in text, name


# --- supervisord ----------------------------------------------------------


def supervisor_parser(text: str) -> configparser.RawConfigParser:
    """Read a file the way supervisord does: no interpolation, inline comments on."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"))
    parser.read_string(text)
    return parser


def supervisor_environment(raw: str) -> dict[str, str]:
    """supervisord's ``environment=`` reading: %-expansion, then a non-POSIX shlex.

    Mirrors ``supervisor.datatypes.dict_of_key_value_pairs``, which is used
    instead when supervisor is installed (see the next helper).
    """
    lexer = shlex.shlex(raw % {})
    lexer.wordchars += "/.+-():"
    tokens = list(lexer)
    result = {}
    for i in range(0, len(tokens), 4):
        key, equals, value = tokens[i : i + 3]
        assert equals == "="
        result[key] = value.strip("'\"")
    return result


def real_or_mirrored_environment(raw: str) -> dict[str, str]:
    if importlib.util.find_spec("supervisor") is None:
        return supervisor_environment(raw)
    from supervisor.datatypes import dict_of_key_value_pairs

    parsed: dict[str, str] = dict_of_key_value_pairs(raw % {})
    return parsed


def test_supervisor_programs_and_group() -> None:
    spec = make_spec()
    parser = supervisor_parser(supervisor_config(spec))
    names = [
        "conveyor-worker-default",
        "conveyor-worker-default-orders",
        "conveyor-beat",
        "conveyor-monitor",
    ]
    assert parser.sections() == ["group:conveyor"] + [f"program:{name}" for name in names]
    assert parser.get("group:conveyor", "programs").split(",") == names
    for name in names:
        program = parser[f"program:{name}"]
        assert program["directory"] == "/srv/myproject"
        assert program["user"] == "app"
        assert program["autostart"] == program["autorestart"] == "true"
        assert program["stopsignal"] == "TERM"
        assert int(program["stopwaitsecs"]) > spec.shutdown_timeout
        assert program["killasgroup"] == "true"
        assert int(program["startsecs"]) >= 1
        assert program["stdout_logfile"] == f"/var/log/conveyor/{name}.log"
        assert program["stderr_logfile"].startswith("/var/log/conveyor/")


def supervisor_command(parser: configparser.RawConfigParser, name: str) -> list[str]:
    """The argv supervisord would exec: %-expansion first, then shlex.split."""
    return shlex.split(parser.get(f"program:{name}", "command") % {})


def test_supervisor_commands() -> None:
    parser = supervisor_parser(supervisor_config(make_spec()))
    exe = "/srv/myproject/.venv/bin/conveyor"
    assert supervisor_command(parser, "conveyor-worker-default") == [
        exe, "-A", "myproject", "worker", "-Q", "default", "-c", "4", "-l", "INFO",
        "-n", "default@%h",
    ]
    assert "default@%%h" in parser.get("program:conveyor-worker-default", "command")
    assert supervisor_command(parser, "conveyor-worker-default-orders")[5:8] == [
        "default,orders", "-c", "2",
    ]
    assert supervisor_command(parser, "conveyor-beat") == [
        exe, "-A", "myproject", "beat", "-l", "INFO",
        "--scheduler", "conveyor.contrib.django.schedulers:DatabaseScheduler",
    ]
    monitor = supervisor_command(parser, "conveyor-monitor")
    assert monitor[:4] == [exe, "-A", "myproject", "monitor"]
    assert monitor[monitor.index("--port") + 1] == "5555"
    assert monitor[monitor.index("--address") + 1] == "127.0.0.1"
    assert monitor[monitor.index(MONITOR_AUTH_FLAG) + 1] == "CONVEYOR_MONITOR_AUTH"


def test_supervisor_without_venv_uses_path() -> None:
    parser = supervisor_parser(supervisor_config(make_spec(venv=None)))
    assert supervisor_command(parser, "conveyor-beat")[0] == "conveyor"


def test_supervisor_starts_beat_after_workers() -> None:
    parser = supervisor_parser(supervisor_config(make_spec()))
    worker = parser.getint("program:conveyor-worker-default", "priority")
    assert parser.getint("program:conveyor-beat", "priority") > worker


@pytest.mark.parametrize(
    "value",
    [TRICKY, "plain", "", "a,b,c", "it's", "50%", "x = y", "ünïcode", "tab\u00a0space"],
)
def test_supervisor_environment_round_trips(value: str) -> None:
    spec = make_spec(env=(("FIRST", "1"), ("VALUE", value), ("LAST", "z")))
    raw = supervisor_parser(supervisor_config(spec)).get("program:conveyor-beat", "environment")
    assert real_or_mirrored_environment(raw) == {"FIRST": "1", "VALUE": value, "LAST": "z"}


def test_supervisor_environment_uses_double_quotes_and_doubles_percent() -> None:
    spec = make_spec(env=(("A", "50%"),))
    raw = supervisor_parser(supervisor_config(spec)).get("program:conveyor-beat", "environment")
    assert raw == 'A="50%%"'


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("both ' and \" inside", "both kinds of quote"),
        ('"quoted"', "starts or ends with a quote"),
        ("trailing'", "starts or ends with a quote"),
        ("a ;comment", "comment"),
    ],
)
def test_supervisor_refuses_values_it_cannot_represent(value: str, match: str) -> None:
    spec = make_spec(env=(("VALUE", value),))
    with pytest.raises(DeployError, match=match) as info:
        supervisor_config(spec)
    assert "VALUE" in str(info.value)


def test_supervisor_needs_absolute_paths() -> None:
    with pytest.raises(DeployError, match=r"absolute directory, got '\.'"):
        supervisor_config(make_spec(directory="."))
    with pytest.raises(DeployError, match="absolute venv"):
        supervisor_config(make_spec(venv=".venv"))


def test_supervisord_main_config_sections() -> None:
    text = supervisord_main_config(
        make_spec(), "/run/c", "/run/c/s.pid", "/run/c/s.log", "/run/c/s.sock"
    )
    parser = supervisor_parser(text)
    for section in ("supervisord", "unix_http_server", "rpcinterface:supervisor", "supervisorctl"):
        assert parser.has_section(section), section
    assert parser.get("supervisord", "pidfile") == "/run/c/s.pid"
    assert parser.get("supervisord", "logfile") == "/run/c/s.log"
    assert parser.get("unix_http_server", "file") == "/run/c/s.sock"
    assert parser.get("supervisorctl", "serverurl") == "unix:///run/c/s.sock"
    assert parser.has_section("program:conveyor-worker-default")


FAKE_CONVEYOR = """#!/bin/sh
echo "ARGV $*"
printf 'TRICKY [%s]\n' "$TRICKY"
trap 'exit 0' TERM
while true; do sleep 0.1; done
"""


def fake_venv(root: Path) -> Path:
    """A venv whose conveyor just reports what it was given and waits for TERM."""
    exe = root / "venv" / "bin" / "conveyor"
    exe.parent.mkdir(parents=True)
    exe.write_text(FAKE_CONVEYOR)
    exe.chmod(0o755)
    return root / "venv"


def wait_for(path: Path, text: str, seconds: float = 15.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


# supervisord is a dev dependency, installed beside this interpreter (not always on PATH).
SUPERVISORD = shutil.which("supervisord", path=os.path.dirname(sys.executable)) or shutil.which(
    "supervisord")


@pytest.mark.skipif(SUPERVISORD is None, reason="supervisord is not installed")
def test_supervisord_runs_the_generated_programs(tmp_path: Path) -> None:
    spec = DeploySpec(
        app="myproject",
        workers=(QueueWorker("default", 2),),
        directory=str(tmp_path),
        venv=str(fake_venv(tmp_path)),
        log_dir=str(tmp_path),
        env=(("TRICKY", TRICKY),),
        shutdown_timeout=1,
        user=getpass.getuser(),  # supervisord "drops" to the user it already is
    )
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        supervisord_main_config(
            spec, str(tmp_path), str(tmp_path / "s.pid"), str(tmp_path / "s.log"),
            str(tmp_path / "s.sock"),
        )
    )
    assert SUPERVISORD is not None
    subprocess.run([SUPERVISORD, "-c", str(conf)], check=True, timeout=30)
    try:
        log = wait_for(tmp_path / "conveyor-worker-default.log", "TRICKY [")
    finally:
        subprocess.run([str(Path(SUPERVISORD).with_name("supervisorctl")), "-c", str(conf),
                        "shutdown"], timeout=30, check=False)
    assert "ARGV -A myproject worker -Q default -c 2 -l INFO -n default@%h" in log
    assert f"TRICKY [{TRICKY}]" in log


# --- systemd --------------------------------------------------------------


def unit_parser(text: str) -> configparser.RawConfigParser:
    # strict=False: repeated keys (Environment=) are legal in unit files.
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def unit_environment(text: str) -> dict[str, str]:
    """Undo systemd's quoting of ``Environment="K=V"``: C escapes, then ``%%``."""
    values = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            (word,) = shlex.split(line.removeprefix("Environment="))
            key, _, value = word.replace("%%", "%").partition("=")
            values[key] = value
    return values


def test_systemd_units_and_target() -> None:
    units = systemd_units(make_spec())
    services = [
        "conveyor-worker-default.service",
        "conveyor-worker-default-orders.service",
        "conveyor-beat.service",
        "conveyor-monitor.service",
    ]
    assert list(units) == [*services, "conveyor.target"]
    target = unit_parser(units["conveyor.target"])
    assert target.get("Unit", "Wants").split() == services
    assert target.get("Install", "WantedBy") == "multi-user.target"


def test_systemd_service_settings() -> None:
    spec = make_spec()
    for name, text in systemd_units(spec).items():
        if not name.endswith(".service"):
            continue
        unit = unit_parser(text)
        assert unit.get("Unit", "PartOf") == "conveyor.target"
        assert "network-online.target" in unit.get("Unit", "After")
        service = unit["Service"]
        assert service["Type"] == "simple"
        assert service["User"] == "app"
        assert service["WorkingDirectory"] == "/srv/myproject"
        assert service["ExecStart"].startswith("/srv/myproject/.venv/bin/conveyor -A myproject ")
        assert service["Restart"] == "always"
        assert service["KillSignal"] == "SIGTERM"
        assert service["KillMode"] == "mixed"
        assert int(service["TimeoutStopSec"]) > spec.shutdown_timeout
        assert unit.get("Install", "WantedBy") == "multi-user.target"
        assert unit_environment(text) == dict(spec.env)


def test_systemd_escapes_the_hostname_specifier() -> None:
    unit = unit_parser(systemd_units(make_spec())["conveyor-worker-default.service"])
    assert unit.get("Service", "ExecStart").endswith(" -n default@%%h")


def test_systemd_without_venv_uses_env() -> None:
    unit = unit_parser(systemd_units(make_spec(venv=None))["conveyor-beat.service"])
    assert unit.get("Service", "ExecStart").startswith("/usr/bin/env conveyor -A myproject beat")


def test_systemd_monitor_reads_credentials_from_a_file() -> None:
    spec = make_spec(monitor_port=8080, monitor_auth_env="MY_AUTH")
    unit = unit_parser(systemd_units(spec)["conveyor-monitor.service"])
    assert unit.get("Service", "EnvironmentFile") == "/etc/conveyor/conveyor-monitor.env"
    argv = shlex.split(unit.get("Service", "ExecStart"))
    assert argv[argv.index("--port") + 1] == "8080"
    assert argv[argv.index("--address") + 1] == "127.0.0.1"
    assert argv[argv.index(MONITOR_AUTH_FLAG) + 1] == "MY_AUTH"


def test_systemd_quotes_awkward_arguments() -> None:
    spec = make_spec(venv="/opt/my venv/100%")
    exec_start = unit_parser(systemd_units(spec)["conveyor-beat.service"]).get(
        "Service", "ExecStart"
    )
    assert exec_start.startswith('"/opt/my venv/100%%/bin/conveyor" ')


def test_systemd_needs_an_absolute_directory() -> None:
    with pytest.raises(DeployError, match=r"systemd needs an absolute directory, got '\.'"):
        systemd_units(make_spec(directory="."))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    spec = make_spec(
        user=None,
        allow_root=True,
        directory=str(tmp_path),
        venv=str(fake_venv(tmp_path)),
        monitor_env_file=str(tmp_path / "monitor.env"),
    )
    units = systemd_units(spec)
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / name) for name in units)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- docker compose -------------------------------------------------------


def test_compose_key_lines() -> None:
    spec = make_spec()
    text = docker_compose(spec, image="acme/shop:1.2", broker_url="redis://redis:6379/3")
    lines = text.splitlines()
    for expected in (
        "services:",
        "  redis:",
        '    image: "redis:7"',
        '    command: ["redis-server", "--appendonly", "yes", "--appendfsync", "always"]',
        "  worker-default:",
        "  worker-default-orders:",
        "  beat:",
        "  monitor:",
        '    image: "acme/shop:1.2"',
        '      CONVEYOR_BROKER_URL: "redis://redis:6379/3"',
        f'    stop_grace_period: "{stop_timeout(spec)}s"',
        '    stop_signal: "SIGTERM"',
        '    ports: ["127.0.0.1:5555:5555"]',
        "volumes:",
    ):
        assert expected in lines, expected
    assert text.count("  beat:") == 1
    # compose interpolates $: a literal one must be doubled, the auth one must not.
    assert "$$HOME" in text
    assert '"${CONVEYOR_MONITOR_AUTH:?' in text


def test_compose_parses_as_yaml() -> None:
    yaml = pytest.importorskip("yaml")
    spec = make_spec(env=(("TRICKY", TRICKY), ("NUMBERISH", "007"), ("BOOLISH", "yes")))
    document = yaml.safe_load(docker_compose(spec))
    services = document["services"]
    assert set(services) == {"redis", "worker-default", "worker-default-orders", "beat", "monitor"}
    worker = services["worker-default-orders"]
    assert worker["command"] == [
        "conveyor", "-A", "myproject", "worker", "-Q", "default,orders", "-c", "2",
        "-l", "INFO", "-n", "default-orders@%h",
    ]
    assert worker["environment"]["TRICKY"] == TRICKY.replace("$", "$$")
    assert worker["environment"]["NUMBERISH"] == "007"
    assert worker["environment"]["BOOLISH"] == "yes"
    assert worker["stop_grace_period"] == f"{stop_timeout(spec)}s"
    assert services["redis"]["command"][1:] == ["--appendonly", "yes", "--appendfsync", "always"]
    assert document["volumes"] == {"redis-data": {}}


def test_compose_without_beat_or_monitor() -> None:
    text = docker_compose(DeploySpec(app="p", workers=(QueueWorker("default"),),
                                     allow_root=True))
    assert "  beat:" not in text and "  monitor:" not in text
    assert "  worker-default:" in text

