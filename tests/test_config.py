"""Configuration precedence: flags > HEAPD_* environment > TOML > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heapd.runtime import config
from heapd.runtime.logs import LogLevel


def test_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "heapd.toml"
    toml.write_text('cell = "from-toml"\n[plm]\nport = 1111\nresult_ttl_s = 5.0\n')
    assert config.load(config.PlmConfig, "plm", {}, {}, toml).port == 1111
    cfg = config.load(
        config.PlmConfig, "plm", {}, {"HEAPD_PLM_PORT": "2222", "HEAPD_CELL": "env"}, toml
    )
    assert (cfg.port, cfg.cell, cfg.result_ttl_s) == (2222, "env", 5.0)
    cfg = config.load(
        config.PlmConfig, "plm", {"port": 3333, "cell": None}, {"HEAPD_PLM_PORT": "2222"}, toml
    )
    assert (cfg.port, cfg.cell) == (3333, "from-toml")
    assert config.load(config.PlmConfig, "plm", {}, {}, None) == config.PlmConfig()


def test_malformed_value_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="port"):
        config.load(config.PlmConfig, "plm", {}, {"HEAPD_PORT": "eighty"}, None)


def test_register_deadline_is_k_intervals() -> None:
    cfg = config.load(config.RegisterConfig, "register", {"heartbeat_interval_s": 0.25}, {}, None)
    assert cfg.deadline_s == pytest.approx(1.0)


def test_up_precedence(tmp_path: Path) -> None:
    """`heapd up` loads like a role: flags > HEAPD_UP_* > HEAPD_* > TOML ([up], then top) >
    defaults."""
    toml = tmp_path / "heapd.toml"
    toml.write_text('cell = "from-toml"\nworkers = 3\n[up]\nslots = 4\nlog_level = "debug"\n')
    cfg = config.load(config.UpConfig, "up", {}, {}, toml)
    assert (cfg.cell, cfg.workers, cfg.slots, cfg.log_level) == ("from-toml", 3, 4, "DEBUG")
    env = {"HEAPD_WORKERS": "5", "HEAPD_UP_WORKERS": "6", "HEAPD_LOG_LEVEL": "error"}
    cfg = config.load(config.UpConfig, "up", {}, env, toml)
    assert (cfg.workers, cfg.slots, cfg.log_level) == (6, 4, LogLevel.ERROR)
    cfg = config.load(config.UpConfig, "up", {"workers": 7, "slots": None}, env, toml)
    assert (cfg.workers, cfg.slots) == (7, 4)
    assert config.load(config.UpConfig, "up", {}, {}, None) == config.UpConfig()


def test_up_ports_read_the_roles_port_variables() -> None:
    """HEAPD_PLM_PORT and HEAPD_REGISTER_PORT mean the same under `heapd up` as for the roles."""
    env = {"HEAPD_PLM_PORT": "8070", "HEAPD_REGISTER_PORT": "8071"}
    up = config.load(config.UpConfig, "up", {}, env, None)
    assert (up.plm_port, up.register_port) == (8070, 8071)
    assert config.load(config.PlmConfig, "plm", {}, env, None).port == 8070
    assert config.load(config.RegisterConfig, "register", {}, env, None).port == 8071


def test_a_worker_with_no_register_flag_finds_a_register_with_no_port_flag() -> None:
    worker, register, up = config.WorkerConfig(), config.RegisterConfig(), config.UpConfig()
    assert worker.register == f"{register.host}:{register.port}"
    assert up.register_port == register.port != 0


ROLE_CONFIGS = [
    config.PlmConfig,
    config.SchedulerConfig,
    config.RegisterConfig,
    config.WorkerConfig,
]


@pytest.mark.parametrize("cls", [*ROLE_CONFIGS, config.UpConfig])
def test_every_role_and_up_have_a_log_level(cls: type[Any]) -> None:
    cfg: Any = config.load(cls, "role", {}, {"HEAPD_LOG_LEVEL": "Warning"}, None)
    assert cfg.log_level == LogLevel.WARNING
    with pytest.raises(ValueError, match="log_level='loud': expected DEBUG or INFO"):
        config.load(cls, "role", {}, {"HEAPD_LOG_LEVEL": "loud"}, None)
