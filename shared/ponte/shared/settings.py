"""Ponte's settings, read from the environment (prefix ``PONTE_``) or a ``.env`` file.

Pointing Ponte at an external Kafka cluster and PostgreSQL takes two variables:
``PONTE_KAFKA_BOOTSTRAP`` and ``PONTE_DATABASE_URL``. Everything else has a default that
suits production; ``ponte dev`` and the tests override the few that differ for the local
broker (idempotence) and speed (short timeouts). Every field is listed in ``.env.example``.

Settings are built in ``main()``/lifespan and injected, never at import time, so tests can
build their own.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything Ponte reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="PONTE_", env_file=".env", extra="ignore")

    # --- the two variables that point Ponte at real infrastructure -----------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    """Comma-separated Kafka bootstrap servers."""
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/ponte"
    """SQLAlchemy URL; ``postgresql://`` is rewritten to the asyncpg driver."""

    # --- Kafka ----------------------------------------------------------------------------
    kafka_idempotence: bool = True
    """Idempotent producer. On for real Kafka; off for the local Tansu broker, which
    cannot answer InitProducerId (see docs/local-infra.md)."""
    kafka_client_id: str = "ponte"
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1_000)
    """How long a consumer that died without leaving its group (SIGKILL, a lost node) keeps
    its partitions before the others take them over. Heartbeats go every third of it."""
    kafka_replication_factor: int = 3
    """Replicas of each topic Ponte creates itself (1 for the single local broker)."""
    raw_topic: str = "ponte.raw"
    """Webhook events as received, one message per record, keyed by record."""
    raw_topic_partitions: int = 6
    changes_topic: str = "ponte.changes"
    """Committed CRM changes for the deliver service, keyed by entity/source/key."""
    changes_topic_partitions: int = 6
    transform_dead_letter_topic: str = "ponte.transform.deadletter"
    """Record events the transform could not store, with the reason in headers."""
    dead_letter_retention_days: int = 30
    produce_timeout_s: float = 5.0
    """How long a webhook waits for the broker's acknowledgement before answering 503."""
    produce_linger_ms: int = 2
    """Small linger: concurrent webhooks share a produce request without adding latency."""

    # --- secrets at rest ------------------------------------------------------------------
    secrets_key: SecretStr | None = None
    """Comma-separated Fernet keys that encrypt source secrets in PostgreSQL
    (``ponte.shared.secret_box``): the first encrypts, each decrypts. Ingest, ops and the
    migration that encrypts existing rows refuse to run without it; ``ponte dev`` and the
    tests generate one. ``ponte secrets-key`` prints a new key."""

    # --- ingest ---------------------------------------------------------------------------
    sources_file: Path | None = None
    """YAML file of sources loaded at start (see sources.example.yaml)."""
    sources_refresh_s: float = 5.0
    """How often ingest re-reads source settings from PostgreSQL (ops API changes)."""
    max_body_bytes: int = 5 * 1024 * 1024
    signature_tolerance_s: int = 300
    """Standard Webhooks timestamp window, either side of now; older deliveries are replays."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Default CIDRs whose X-Forwarded-For is believed, for sources that set none."""
    retry_after_s: int = 5
    """Retry-After sent with a 503 when the broker cannot take an event."""
    dedup_pending_timeout_s: float = 30.0
    """A claimed delivery that never reached the broker (crash) may be retried after this."""
    pulls_file: Path | None = None
    """YAML of scheduled pulls from ERP REST APIs (see pulls.example.yaml); a file that is
    not there means no pulls (logged)."""

    # --- transform ------------------------------------------------------------------------
    transform_group_id: str = "ponte-transform"
    transform_batch_size: int = 500
    """Raw events per database transaction (and per offset commit)."""
    transform_batch_wait_ms: int = 50
    """How long to wait for a batch to fill before processing what has arrived."""
    mappings_dir: Path | None = None
    """Directory of mapping overrides (<source_id>.yaml or <kind>.yaml); default: shipped."""
    outbox_relay_interval_s: float = 0.5
    """How often pending change events and dead letters are published if no batch ran."""
    parked_sweep_interval_s: float = 30.0
    """How often every parked reference is re-checked against rows other replicas wrote."""
    parked_reference_expiry_s: float = 7 * 24 * 3600.0
    """A parked reference older than this is dead-lettered with its context (the row stays
    stored, the column NULL) instead of waiting forever; 0: never."""
    classification_enabled: bool = True
    """Rank companies on an ABC curve and file them in portfolios (seed 001's rule)."""
    classification_file: Path | None = None
    """YAML of the ABC curve and portfolio rules (classification.example.yaml); none: defaults."""
    classification_interval_s: float = 3600.0
    """How often companies are re-ranked even when no order changed (the window moves)."""
    classification_debounce_s: float = 30.0
    """After orders or invoices change, wait this long for more before re-ranking."""

    # --- deliver --------------------------------------------------------------------------
    targets_file: Path | None = None
    """YAML file of CRM targets (see targets.example.yaml)."""
    deliver_group_id: str = "ponte-deliver"
    deliver_dead_letter_topic: str = "ponte.deliver.deadletter"
    """Changes a CRM refused or that kept failing, with the reason in headers."""
    deliver_max_attempts: int = 8
    deliver_max_age_s: float = 600.0
    """A change still failing after this long goes to the dead-letter topic."""
    deliver_timeout_s: float = 30.0
    """Timeout of one CRM call."""
    deliver_linger_ms: int = Field(default=250, ge=0)
    """Wait up to this long for a fuller batch (up to 1,000 changes) before delivering:
    under a CRM's rate limit, fewer and fuller calls (ponte.deliver.consumer)."""

    # --- status back to the origin (CRM webhooks -> shop or ERP) -------------------------
    status_topic: str = "ponte.status"
    """Signed CRM webhook events (HubSpot deal stage changes), keyed by target and deal."""
    status_topic_partitions: int = 3
    status_dead_letter_topic: str = "ponte.status.deadletter"
    """Status updates an origin refused or that kept failing, with the reason in headers."""
    status_group_id: str = "ponte-status-back"
    """Consumer group of the status topic (retries, timeout: the deliver_* settings)."""

    # --- request history ------------------------------------------------------------------
    history_retention_days: int = 30
    history_flush_interval_s: float = 0.2
    history_batch_size: int = 500
    history_queue_max: int = 100_000
    history_keep_body_bytes: int = 5 * 1024 * 1024
    """Bodies up to this size are kept in the history; larger ones keep their digest only."""

    # --- ops (API and page) ---------------------------------------------------------------
    ops_token: SecretStr | None = None
    """Bearer token of the ops API and page (a secret; the ops service refuses to start
    without one)."""
    history_max_days: int = 7
    """Longest period one history export may span (seed 001: at most 7 days per query)."""
    ops_cookie_secure: bool | None = None
    """Mark the ops page's session cookie ``Secure``: unset, only when the request itself
    came over HTTPS; ``true`` behind a TLS ingress, where the app sees plain HTTP
    (X-Forwarded-Proto is not trusted, like X-Forwarded-For) and cannot tell by itself
    (the Kubernetes config sets it); ``false`` never."""
    ops_timezone: str = "America/Sao_Paulo"
    """The zone the ops page shows times in (each time carries its offset)."""

    @field_validator("ops_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone (e.g. America/Sao_Paulo)") from None
        return value

    # --- process --------------------------------------------------------------------------
    log_level: str = "INFO"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    shutdown_drain_s: float = 0.0
    """On SIGTERM, answer /readyz 503 for this long before closing the listener, so a load
    balancer stops routing first (Kubernetes: a few seconds; locally: none)."""

    @field_validator("database_url")
    @classmethod
    def _asyncpg_driver(cls, url: str) -> str:
        """Accept the plain ``postgresql://`` form a platform team already has."""
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return url

    @property
    def asyncpg_dsn(self) -> str:
        """The URL in the form asyncpg itself takes (no SQLAlchemy driver suffix)."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
