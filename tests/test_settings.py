"""Settings: environment over TOML over defaults, endpoint variables switch parts to external,
and a bad value stops start-up with a message naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from foveal.errors import ConfigError
from foveal.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("FOVEAL_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray ./foveal.toml


def test_defaults_are_the_embedded_stack_on_loopback() -> None:
    s = load_settings()
    assert s.kafka_address == "127.0.0.1:19092"
    assert s.postgres_url == "postgresql+psycopg://postgres@127.0.0.1:15432/foveal"
    assert s.triton_address == "127.0.0.1:18001"
    assert s.kafka_bootstrap is None and s.database_url is None and s.triton_url is None


def test_endpoint_variables_switch_parts_to_external(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOVEAL_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("FOVEAL_DATABASE_URL", "postgresql://u:p@db:5432/prod")
    monkeypatch.setenv("FOVEAL_TRITON_URL", "gpu-box:8001")
    s = load_settings()
    assert s.kafka_address == "k1:9092,k2:9092"
    assert s.postgres_url == "postgresql+psycopg://u:p@db:5432/prod"
    assert s.triton_address == "gpu-box:8001"


def test_blank_endpoint_variable_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOVEAL_KAFKA_BOOTSTRAP", "  ")
    assert load_settings().kafka_bootstrap is None


def test_toml_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "plant.toml"
    config.write_text('frames_partitions = 12\nkafka_port = 29092\ntriton_url = "t:8001"\n')
    monkeypatch.setenv("FOVEAL_CONFIG", str(config))
    monkeypatch.setenv("FOVEAL_KAFKA_PORT", "39092")
    s = load_settings()
    assert s.frames_partitions == 12  # from the file
    assert s.kafka_port == 39092  # the environment overrides the file
    assert s.triton_url == "t:8001"


def test_foveal_toml_in_working_directory_is_picked_up(tmp_path: Path) -> None:
    (tmp_path / "foveal.toml").write_text("verdicts_partitions = 8\n")
    assert load_settings().verdicts_partitions == 8


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOVEAL_CONFIG", "/nowhere/foveal.toml")
    with pytest.raises(ConfigError, match=r"FOVEAL_CONFIG=/nowhere/foveal\.toml: no such file"):
        load_settings()


@pytest.mark.parametrize(("variable", "value"), [
    ("FOVEAL_KAFKA_PORT", "70000"),
    ("FOVEAL_FRAMES_PARTITIONS", "0"),
    ("FOVEAL_DATABASE_URL", "mysql://u@h/db"),
    ("FOVEAL_START_TIMEOUT_S", "soon"),
    ("FOVEAL_TOWER_PRECISION", "float16"),
])
def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_unknown_key_in_toml_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "foveal.toml").write_text("kafka_bootstrapp = 'typo:9092'\n")
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAPP"):
        load_settings()


def test_a_lines_product_codes_come_from_toml_or_json_and_bad_type_names_are_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "foveal.toml").write_text(
        '[products.bracket-a12]\ndefect_types = ["scratch", "porosity"]\nsurface = "cast_part"\n'
        '[products.P-9]\n')
    products = load_settings().products
    assert products["bracket-a12"].defect_types == ["scratch", "porosity"]
    assert products["bracket-a12"].surface == "cast_part"
    assert products["P-9"].defect_types is None and products["P-9"].surface is None
    assert load_settings().unknown_products == "generic"
    monkeypatch.setenv("FOVEAL_PRODUCTS", '{"lid": {"defect_types": ["Big Dent"]}}')
    with pytest.raises(ConfigError, match=r"FOVEAL_PRODUCTS\.lid\.defect_types"):
        load_settings()
    monkeypatch.setenv("FOVEAL_PRODUCTS", "{}")
    monkeypatch.setenv("FOVEAL_UNKNOWN_PRODUCTS", "drop")
    with pytest.raises(ConfigError, match="FOVEAL_UNKNOWN_PRODUCTS"):
        load_settings()


def test_the_ingest_topic_defaults_are_the_contract_topics() -> None:
    from foveal import messaging

    settings = load_settings()
    assert (settings.ingest_frames_topic, settings.ingest_verdicts_topic, settings.ingest_dlq_topic) == (
        messaging.FRAMES_TOPIC, messaging.VERDICTS_TOPIC, messaging.DLQ_TOPIC)
