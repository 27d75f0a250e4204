"""`heapd up` and `heapd down` configure through `UpConfig`, like every role: their flags carry
no defaults of their own, so the environment and the TOML file reach them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from heapd.cli import main
from heapd.runtime import config, pidfile, supervisor
from heapd.runtime.logs import LogLevel
from tests.conftest import StartCell


def up_config(argv: list[str], env: dict[str, str]) -> config.UpConfig:
    return main.up_config(main.parser().parse_args(argv), env)


def test_environment_reaches_up_when_no_flag_is_given() -> None:
    env = {"HEAPD_CELL": "prod", "HEAPD_UP_WORKERS": "5", "HEAPD_PLM_PORT": "8070"}
    cfg = up_config(["up"], env)
    assert (cfg.cell, cfg.workers, cfg.plm_port) == ("prod", 5, 8070)
    assert (cfg.slots, cfg.register_port) == (config.UpConfig.slots, config.DEFAULT_REGISTER_PORT)


def test_flags_beat_the_environment() -> None:
    argv = ["up", "--cell", "flag", "--workers", "3", "--port", "0", "--register-port", "0"]
    cfg = up_config([*argv, "--log-level", "warning", "--logs", "/tmp/x"], {"HEAPD_WORKERS": "5"})
    assert (cfg.cell, cfg.workers, cfg.plm_port, cfg.register_port) == ("flag", 3, 0, 0)
    assert (cfg.log_level, cfg.log_dir) == (LogLevel.WARNING, "/tmp/x")


def test_config_file_from_flag_or_environment(tmp_path: Path) -> None:
    toml = tmp_path / "heapd.toml"
    toml.write_text('cell = "from-toml"\n[up]\nworkers = 4\nmax_blob_kb = 8\n')
    for argv, env in ((["up", "--config", str(toml)], {}), (["up"], {"HEAPD_CONFIG": str(toml)})):
        cfg = up_config(argv, env)
        assert (cfg.cell, cfg.workers, cfg.max_blob_kb) == ("from-toml", 4, 8)


def test_transport_from_flag_environment_or_file(tmp_path: Path) -> None:
    toml = tmp_path / "heapd.toml"
    toml.write_text('[up]\ntransport = "tcp"\n')
    assert up_config(["up"], {}).transport is config.Transport.UNIX  # the default
    assert up_config(["up", "--config", str(toml)], {}).transport is config.Transport.TCP
    assert up_config(["up"], {"HEAPD_TRANSPORT": "tcp"}).transport is config.Transport.TCP
    env = {"HEAPD_TRANSPORT": "tcp"}
    assert up_config(["up", "--transport", "unix"], env).transport is config.Transport.UNIX
    with pytest.raises(ValueError, match="expected unix or tcp"):
        config.load(config.UpConfig, "up", {}, {"HEAPD_TRANSPORT": "udp"})
    role = {"HEAPD_PLM_SOCKET": "/run/plm.sock", "HEAPD_SOCKET": "/run/any.sock"}
    assert config.load(config.PlmConfig, "plm", {}, role).socket == "/run/plm.sock"
    assert config.load(config.RegisterConfig, "register", {}, role).socket == "/run/any.sock"
    assert config.load(config.WorkerConfig, "worker", {"socket": ""}, role).socket == ""


def test_down_finds_the_cell_as_up_does(tmp_path: Path) -> None:
    toml = tmp_path / "heapd.toml"
    toml.write_text('[up]\ncell = "from-toml"\n')
    assert up_config(["down", "--config", str(toml)], {}).cell == "from-toml"
    assert up_config(["down"], {"HEAPD_UP_CELL": "env"}).cell == "env"
    assert up_config(["down", "--cell", "flag"], {"HEAPD_CELL": "env"}).cell == "flag"


def test_unknown_log_level_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.parser().parse_args(["up", "--log-level", "loud"])
    assert "invalid choice: 'LOUD'" in capsys.readouterr().err


def test_a_refused_second_up_leaves_the_running_cells_pidfile(start_cell: StartCell) -> None:
    """`heapd up` of a cell that runs exits 2 and must not take the pidfile `heapd down` uses."""
    cell = start_cell(workers=0)
    recorded = pidfile.path(cell.name).read_text()
    assert cell.process is not None and recorded == str(cell.process.pid)
    second = subprocess.run(
        [sys.executable, "-m", "heapd", "up", "--cell", cell.name, "--port", "0",
         "--register-port", "0", "--workers", "0"],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert second.returncode == supervisor.EXIT_CELL_EXISTS
    assert pidfile.path(cell.name).read_text() == recorded
