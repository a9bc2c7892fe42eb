"""Settings: documented, and easy to point at real infrastructure."""

from __future__ import annotations

from pathlib import Path

import pytest

from ponte.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented_in_env_example() -> None:
    documented = {
        line.split("=", 1)[0].strip()
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.startswith("PONTE_")
    }
    expected = {f"PONTE_{name.upper()}" for name in Settings.model_fields}
    assert expected - documented == set()
    assert documented - expected == set()


def test_two_variables_point_at_real_infrastructure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONTE_KAFKA_BOOTSTRAP", "kafka-0:9092,kafka-1:9092")
    monkeypatch.setenv("PONTE_DATABASE_URL", "postgresql://ponte:pw@db:5432/ponte")
    settings = Settings(_env_file=None)
    assert settings.kafka_bootstrap == "kafka-0:9092,kafka-1:9092"
    assert settings.database_url == "postgresql+asyncpg://ponte:pw@db:5432/ponte"
    assert settings.asyncpg_dsn == "postgresql://ponte:pw@db:5432/ponte"
    assert settings.kafka_idempotence is True  # production default
