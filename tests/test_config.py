"""Configuration precedence: flags > HEAPD_* environment > TOML > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from heapd.runtime import config


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
