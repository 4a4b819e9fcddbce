"""``conveyor deploy`` defaults that protect a careless operator (issue 15, finding 4).

* no file without ``--user`` unless ``--allow-root`` (programs would run as root);
* secret ``--env`` items go to a mode-0600 file referenced by path, never
  inline and never in the "regenerate" comment;
* the monitor's credential settings are refused in ``--env`` like its
  ``--monitor-auth-env`` variable.

The supervisord run with a real password is in
``tests/integration/test_supervisor.py::test_secrets_reach_the_programs_only_through_the_0600_file``.

Celery: ``celery multi`` and the documented supervisor/systemd examples set
``user=celery``/``User=celery``; Celery warns when a worker runs as root
with pickle enabled (``celery/platforms.py`` ``check_privileges``).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from conveyor._cli import main
from conveyor._deploy import parse_env_file

SECRET = "dpl-s3cret-77"
APP = "tests.integration.worker_app"
TARGETS = ("supervisor", "systemd", "compose")


def deploy(*args: str) -> Result:
    return CliRunner().invoke(main, ["-A", APP, "deploy", *args], catch_exceptions=False)


@pytest.mark.parametrize("target", TARGETS)
def test_no_user_is_refused_unless_root_is_allowed(target: str, tmp_path: Path) -> None:
    refused = deploy(target, "--queue", "default", "--directory", str(tmp_path))
    assert refused.exit_code == 2
    assert "--user" in refused.output and "--allow-root" in refused.output
    assert "root" in refused.output
    allowed = deploy(target, "--queue", "default", "--directory", str(tmp_path), "--allow-root")
    assert allowed.exit_code == 0, allowed.output
    assert "--allow-root" in allowed.output  # the regenerate comment keeps the choice visible
    named = deploy(target, "--queue", "default", "--directory", str(tmp_path), "--user", "svc")
    assert named.exit_code == 0, named.output
    assert {"supervisor": "user=svc", "systemd": "User=svc",
            "compose": 'user: "svc"'}[target] in named.output


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_go_to_a_0600_file_never_inline(target: str, tmp_path: Path) -> None:
    env_file = tmp_path / "secrets.env"
    out_dir = tmp_path / "units"
    args = [target, "--queue", "default", "--user", "svc", "--directory", str(tmp_path),
            "--env-file", str(env_file),
            "--env", f"CONVEYOR_BROKER_URL=redis://:{SECRET}@10.0.0.5:6379/0",
            "--env", f"CONVEYOR_RESULT_BACKEND=redis://10.0.0.5/1?password={SECRET}",
            "--env", f"PAYMENT_API_TOKEN={SECRET}", "--env", "PLAIN_SETTING=visible"]
    if target == "systemd":
        args += ["-o", str(out_dir)]
    result = deploy(*args)
    assert result.exit_code == 0, result.output
    generated = result.output + "".join(p.read_text() for p in out_dir.glob("*"))
    assert SECRET not in generated
    assert "PLAIN_SETTING" in generated and "visible" in generated
    assert str(env_file) in generated  # referenced by path
    assert "CONVEYOR_BROKER_URL, CONVEYOR_RESULT_BACKEND, PAYMENT_API_TOKEN" in generated
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    for unit in out_dir.glob("*"):  # files that point at the secrets are not world-readable
        assert stat.S_IMODE(unit.stat().st_mode) & 0o007 == 0, unit
    assert parse_env_file(env_file.read_text()) == {
        "CONVEYOR_BROKER_URL": f"redis://:{SECRET}@10.0.0.5:6379/0",
        "CONVEYOR_RESULT_BACKEND": f"redis://10.0.0.5/1?password={SECRET}",
        "PAYMENT_API_TOKEN": SECRET}
    reference = {"supervisor": f"--env-file {env_file}", "systemd": f"EnvironmentFile={env_file}",
                 "compose": f'env_file: ["{env_file}"]'}[target]
    assert reference in generated


def test_an_existing_world_readable_file_is_tightened(tmp_path: Path) -> None:
    env_file = tmp_path / "secrets.env"
    env_file.write_text("OLD=1\n")
    env_file.chmod(0o644)
    result = deploy("supervisor", "--queue", "default", "--user", "svc", "--directory",
                    str(tmp_path), "--env-file", str(env_file), "--env", f"DB_PASSWORD={SECRET}")
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert parse_env_file(env_file.read_text()) == {"DB_PASSWORD": SECRET}


@pytest.mark.parametrize("name", ["CONVEYOR_MONITOR_BASIC_AUTH", "CONVEYOR_MONITOR_READONLY_AUTH",
                                  "CONVEYOR_MONITOR_AUTH"])
def test_monitor_credentials_are_refused_like_its_auth_variable(name: str,
                                                                tmp_path: Path) -> None:
    result = deploy("supervisor", "--queue", "default", "--user", "svc", "--monitor",
                    "--directory", str(tmp_path), "--env", f"{name}=admin:{SECRET}")
    assert result.exit_code == 2
    assert name in result.output and "monitor's credentials" in result.output
    assert SECRET not in result.output


def test_the_env_file_option_loads_before_the_app(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``conveyor --env-file`` (what supervisord programs use) sets the variables the
    app reads, and warns when other users can read the file."""
    monkeypatch.setenv("CONVEYOR_WORKER_CONCURRENCY", "1")  # restored after the test
    env_file = tmp_path / "app.env"
    env_file.write_text("# comment\nCONVEYOR_WORKER_CONCURRENCY='3'\n")
    env_file.chmod(0o644)
    result = CliRunner().invoke(main, ["--env-file", str(env_file), "-A", APP, "report"])
    assert result.exit_code == 0, result.output
    assert "worker_concurrency = 3" in result.output
    assert "readable by other users" in result.output
