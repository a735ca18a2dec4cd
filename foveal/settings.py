"""One settings object for every foveal command and service.

Values come, highest first, from: keyword arguments, `FOVEAL_*` environment variables, a TOML
file (`FOVEAL_CONFIG`, else `./foveal.toml` when it exists), the defaults below. Build it in
`main()` with `load_settings()` and pass it down; nothing builds it at import time.

The three endpoint variables switch a part of the stack from embedded to external:
`FOVEAL_KAFKA_BOOTSTRAP`, `FOVEAL_DATABASE_URL`, `FOVEAL_TRITON_URL`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from foveal.domain import check_defect_name
from foveal.errors import ConfigError

CONFIG_ENV = "FOVEAL_CONFIG"
DEFAULT_CONFIG_FILE = Path("foveal.toml")


class ProductSettings(BaseModel):
    """One product code a line sends (`[products.<code>]` in foveal.toml)."""

    model_config = ConfigDict(extra="forbid")

    defect_types: list[str] | None = Field(
        None, description="The types this product is inspected for (a subset of the default ones, and "
                          "the line's own); none given: the default taxonomy.")
    surface: str | None = Field(
        None, description="What the inspection prompt calls the part, e.g. cast_part: a surface the model "
                          "was trained on. None: the generic prompt.")

    @field_validator("defect_types")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            check_defect_name(name)
        return value


class Settings(BaseSettings):
    """Everything configurable, flat, with the `FOVEAL_` prefix in the environment."""

    model_config = SettingsConfigDict(env_prefix="FOVEAL_", extra="forbid", validate_default=True)

    home: Path = Field(Path(".foveal"), description="Where embedded parts keep data, logs and pids.")
    bind_host: str = Field("127.0.0.1", description="Loopback address the embedded parts listen on.")

    # Endpoint variables: set one to use an external part; foveal then starts nothing for it.
    kafka_bootstrap: str | None = Field(None, description="host:port[,host:port] of a Kafka cluster.")
    database_url: str | None = Field(None, description="PostgreSQL URL, e.g. postgresql://u:p@h:5432/db.")
    triton_url: str | None = Field(None, description="host:port of Triton's gRPC endpoint.")

    # Embedded parts: non-standard ports so they never clash with a real installation.
    kafka_port: int = Field(19092, ge=1, le=65535)
    postgres_port: int = Field(15432, ge=1, le=65535)
    postgres_db: str = "foveal"
    triton_http_port: int = Field(18000, ge=1, le=65535)
    triton_grpc_port: int = Field(18001, ge=1, le=65535)
    triton_metrics_port: int = Field(18002, ge=1, le=65535)
    model_repository: Path = Field(Path("models"), description="Triton model repository served.")
    triton_model: str = Field("foveal_vl", description="Name of the reasoning model on Triton.")
    triton_shared_memory: bool = Field(
        True, description="Hand each turn's images to Triton through system shared memory when Triton "
                          "can map it (it runs on this host, or shares its /dev/shm); else, or when off, "
                          "they travel inside the gRPC requests (docs/serving.md).")
    model_dir: Path = Field(Path("models/foveal_vl/1/weights"),
                            description="The reasoning model: a compact foveal model or a Qwen2.5-VL "
                                        "checkpoint directory.")
    tower_precision: str = Field(
        "auto", pattern="^(auto|float32|bfloat16)$",
        description="What a compact tower runs the pointer's reranked probes in, in this process "
                    "(eval, predict): auto is bfloat16 where the CPU or GPU runs it natively. "
                    "Triton's model reads its own config.pbtxt parameter of that name.")

    # Topics.
    frames_partitions: int = Field(4, ge=1)
    verdicts_partitions: int = Field(4, ge=1)
    dlq_partitions: int = Field(1, ge=1)
    topic_replication: int = Field(1, ge=1, description="Replication factor of created topics.")

    # The gRPC reasoning service (`foveal serve reasoner`); it listens on `bind_host`.
    reasoner_port: int = Field(18051, ge=1, le=65535, description="gRPC port of the reasoning service.")
    reasoner_metrics_port: int = Field(18052, ge=1, le=65535,
                                       description="HTTP port of the reasoning service's Prometheus metrics.")
    reasoner_max_concurrency: int = Field(32, ge=1, description="Concurrent inspections before "
                                                                "RESOURCE_EXHAUSTED.")
    reasoner_max_message_mb: int = Field(32, ge=1, le=2047, description="Largest gRPC message, both ways.")
    reasoner_max_megapixels: float = Field(50.0, gt=0, description="Largest image accepted (bomb guard).")
    reasoner_health_poll_s: float = Field(1.0, gt=0, description="How often the model's readiness is polled.")
    reasoner_health_failures: int = Field(
        3, ge=1, description="Readiness probes in a row that get no answer (unreachable, or slow under load) "
                             "before health says NOT_SERVING; a 'not ready' answer counts at once.")
    reasoner_timeout_s: float = Field(60.0, gt=0, description="Longest an inspection may run when its "
                                                              "client sets no deadline.")
    products: dict[str, ProductSettings] = Field(
        default_factory=dict,
        description="The product codes lines send, each with its defect types and the surface the prompt "
                    "names (TOML tables [products.<code>], or JSON in FOVEAL_PRODUCTS). The renderer's five "
                    "products are known without it, each named as itself.")
    unknown_products: Literal["generic", "refuse"] = Field(
        "generic", description="A product code in no catalog entry: inspected with the generic prompt and "
                               "the default taxonomy (generic), or refused with INVALID_ARGUMENT (refuse), "
                               "which sends its frames to the dead-letter topic.")
    reasoner_ship_frame: bool = Field(
        False, description="Send each single frame to the model once, raw, so that it cuts the grounded "
                          "pointer's probes itself (2 Triton calls per zoom instead of 4, the frame's bytes "
                          "more per inspection; docs/serving.md). Off: on the CPU stack it cost the "
                          "pipeline ~10 % throughput.")
    reasoner_ship_frame_max_megapixels: float = Field(
        5.0, gt=0, description="Larger frames are not sent (their probes are): the model host holds the "
                               "frame of every live inspection (3 bytes a pixel).")

    # Frames on `foveal.frames`: images up to this size travel inline, larger ones by claim check.
    blob_dir: Path | None = Field(None, description="Directory blob store for frame images "
                                                    "(default: <home>/blobs).")
    blob_url: str | None = Field(None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
                                 description="s3://bucket/prefix: new blobs go to this S3-compatible "
                                             "store instead of the directory (credentials: boto3's chain).")
    s3_endpoint_url: str | None = Field(None, pattern=r"^https?://",
                                        description="Endpoint of an S3-compatible store other than AWS "
                                                    "(MinIO, Ceph, SeaweedFS): http(s)://host:port.")
    # 1 MB keeps a record under a stock Kafka broker's message.max.bytes; most 1024–2048 px PNGs
    # (0.3–8 MB, median 1.9 MB on FovealBench dev) therefore travel by claim check.
    frame_inline_max_bytes: int = Field(1_000_000, ge=1024,
                                        description="Largest inline image bytes per frame record; "
                                                    "above it the image goes to the blob store.")

    # The ingest worker (`foveal serve ingest`): foveal.frames → Reasoner → PostgreSQL + foveal.verdicts.
    reasoner_url: str | None = Field(None, description="host:port of the Reasoner gRPC service the ingest "
                                                       "worker calls (default: bind_host:reasoner_port).")
    ingest_group: str = Field("foveal-ingest", min_length=1, description="Kafka consumer group of the "
                                                                         "ingest workers.")
    ingest_frames_topic: str = Field("foveal.frames", min_length=1,
                                     description="Topic the ingest workers consume.")
    ingest_verdicts_topic: str = Field("foveal.verdicts", min_length=1,
                                       description="Topic the ingest workers produce verdicts to.")
    ingest_dlq_topic: str = Field("foveal.frames.dlq", min_length=1,
                                  description="Topic the ingest workers dead-letter poison records to.")
    ingest_max_in_flight: int = Field(8, ge=1, description="Frames one ingest worker handles at once; "
                                                           "its partitions pause beyond it.")
    ingest_inspect_timeout_s: float = Field(60.0, gt=0, description="Deadline of one Reasoner.Inspect call.")
    ingest_max_frame_bytes: int = Field(32_000_000, ge=1024,
                                        description="Largest frame (record value, or its images' total "
                                                    "bytes) ingest accepts; larger ones go to the DLQ.")
    ingest_retry_initial_s: float = Field(0.5, gt=0, description="First backoff after a transient fault.")
    ingest_retry_max_s: float = Field(30.0, gt=0, description="Longest backoff between retries.")
    ingest_max_attempts: int = Field(5, ge=1, description="Attempts at a frame that fails for an unexpected "
                                                          "reason (INTERNAL, ...) before it goes to the DLQ.")
    ingest_metrics_port: int = Field(18053, ge=0, le=65535,
                                     description="HTTP port of the ingest worker's Prometheus metrics "
                                                 "(0: any free port).")
    ingest_shutdown_grace_s: float = Field(10.0, ge=0, description="How long in-flight frames may finish "
                                                                   "at shutdown before they are abandoned.")

    # The review dashboard (`foveal serve dashboard`).
    dashboard_host: str = Field("127.0.0.1", min_length=1, description="Address the dashboard listens on.")
    dashboard_port: int = Field(18080, ge=1, le=65535, description="HTTP port of the review dashboard.")
    dashboard_secret_key: SecretStr | None = Field(
        None, description="Key that signs CSRF tokens (32+ characters); unset: a random key kept in "
                          "<home>/dashboard/secret_key.")
    dashboard_session_hours: float = Field(12.0, gt=0, le=24 * 30,
                                           description="How long a sign-in lasts (one shift by default).")
    dashboard_secure_cookies: bool = Field(False, description="Cookies over HTTPS only (set behind TLS).")
    dashboard_page_size: int = Field(50, ge=1, le=500, description="Inspections per queue page.")

    # How long `stack up` waits for each part to become healthy.
    start_timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)

    @field_validator("kafka_bootstrap", "database_url", "triton_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _sqlalchemy_driver(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix):]
        if not value.startswith("postgresql+psycopg://"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("dashboard_secret_key", mode="before")
    @classmethod
    def _secret_key_long_enough(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if len(raw) < 32:
            raise ValueError("must be at least 32 characters (e.g. `python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))'`)")
        return value

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def model_repository_dir(self) -> Path:
        return self.model_repository.expanduser().resolve()

    @property
    def blob_root(self) -> Path:
        """The directory blob store's root: `blob_dir`, else `<home>/blobs`."""
        return (self.blob_dir or self.home / "blobs").expanduser().resolve()

    @property
    def kafka_address(self) -> str:
        return self.kafka_bootstrap or f"{self.bind_host}:{self.kafka_port}"

    @property
    def postgres_url(self) -> str:
        """SQLAlchemy URL of the database in use (external or embedded)."""
        return self.database_url or (
            f"postgresql+psycopg://postgres@{self.bind_host}:{self.postgres_port}/{self.postgres_db}"
        )

    @property
    def reasoner_address(self) -> str:
        return self.reasoner_url or f"{self.bind_host}:{self.reasoner_port}"

    @property
    def triton_address(self) -> str:
        return self.triton_url or f"{self.bind_host}:{self.triton_grpc_port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _config_file()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def _config_file() -> Path | None:
    named = os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={named}: no such file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings, turning validation errors into one clear ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            head, *rest = [str(p) for p in err["loc"]] or ["settings"]
            got = "***" if "secret" in head else repr(err.get("input"))  # never echo a secret
            where = "".join(f".{p}" for p in rest)  # keys inside a table keep their case (product codes)
            problems.append(f"FOVEAL_{head.upper()}{where}: {err['msg']} (got {got})")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
