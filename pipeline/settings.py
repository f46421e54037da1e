"""The one reader of the environment.

Every tunable of the service is read here, once, at import time, with a sensible default; the rest of the
code imports the values from this module and never touches ``os.environ``.  Each value is documented in
``README.md`` and ``.env.example``.

Heroku-style platforms are understood as they are: ``DATABASE_URL`` in the ``postgres://`` form, Heroku
Kafka's ``KAFKA_URL`` (a comma list of ``kafka+ssl://host:port``) with ``KAFKA_TRUSTED_CERT``,
``KAFKA_CLIENT_CERT``, ``KAFKA_CLIENT_CERT_KEY`` and ``KAFKA_PREFIX``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class SettingsError(ValueError):
    """A variable of the environment holds a value that cannot be used."""


def _str(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {value}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}")


def _list(name: str, default: str) -> list[str]:
    return [part.strip() for part in _str(name, default).split(",") if part.strip()]


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _str(name, default).lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _kafka_servers(env: Mapping[str, str]) -> list[str]:
    """``KAFKA_BOOTSTRAP_SERVERS`` wins; else Heroku's ``KAFKA_URL`` (``kafka+ssl://h:p,kafka+ssl://h:p``)."""
    raw = env.get("KAFKA_BOOTSTRAP_SERVERS") or env.get("KAFKA_URL") or "127.0.0.1:19092"
    servers = []
    for part in raw.split(","):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        if part:
            servers.append(part)
    return servers


def _kafka_security_protocol(env: Mapping[str, str]) -> str:
    explicit = env.get("KAFKA_SECURITY_PROTOCOL")
    if explicit:
        return explicit.upper()
    if "kafka+ssl://" in env.get("KAFKA_URL", "") and not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "SSL"
    return "PLAINTEXT"


def _kafka_options(env: Mapping[str, str]) -> dict[str, Any]:
    """Extra kafka-python options as JSON in ``KAFKA_OPTIONS``, passed through to every client."""
    raw = env.get("KAFKA_OPTIONS", "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except ValueError:
        raise SettingsError(f"KAFKA_OPTIONS must be a JSON object, not {raw!r}") from None
    if not isinstance(options, dict):
        raise SettingsError("KAFKA_OPTIONS must be a JSON object")
    return options


#: Heroku's one-off and scheduled dynos (``run.4711``): numbered anew each time, so not names that last.
_ONE_OFF_DYNOS = {"run", "scheduler", "release"}


def _group_instance_id(env: Mapping[str, str]) -> str:
    """The stable name of this worker host for static group membership, or "" for dynamic membership.

    ``KAFKA_GROUP_INSTANCE_ID`` when set; else, when ``KAFKA_STATIC_MEMBERSHIP`` is true, Heroku's dyno
    name (``DYNO``, e.g. ``worker.1``: the same across restarts of that dyno).  ``KAFKA_STATIC_MEMBERSHIP``
    false turns static membership off whatever is set.  A container's hostname is never used: it is new
    at each start, and a name that changes brings nothing but partitions left idle.
    """
    explicit = env.get("KAFKA_GROUP_INSTANCE_ID", "").strip()
    if not _bool("KAFKA_STATIC_MEMBERSHIP", bool(explicit)):
        return ""
    if explicit:
        return explicit
    kind, _, number = env.get("DYNO", "").partition(".")
    return f"{kind}.{number}" if kind and number.isdigit() and kind not in _ONE_OFF_DYNOS else ""


def _database_url(env: Mapping[str, str]) -> str:
    url = env.get("DATABASE_URL") or "postgresql://bup@127.0.0.1:55432/bup"
    # Heroku hands out postgres://, which some drivers refuse; peewee's playhouse accepts both.
    return url


# --- Web -------------------------------------------------------------------------------------------------
#: TCP port the web process listens on.
PORT = _int("PORT", 8000, minimum=1)
#: Bearer token required on every ``/api`` route when set; empty means no authentication.
API_TOKEN = _str("API_TOKEN", "")
#: Largest body accepted by ``POST /api/user``, in bytes.
MAX_BODY_BYTES = _int("MAX_BODY_BYTES", 1024 * 1024, minimum=1)
#: Largest body accepted by ``POST /api/users`` (JSON, NDJSON or CSV), in bytes.
MAX_BATCH_BYTES = _int("MAX_BATCH_BYTES", 256 * 1024 * 1024, minimum=1)
#: Most records accepted in one batch.
MAX_BATCH_RECORDS = _int("MAX_BATCH_RECORDS", 2_000_000, minimum=1)
#: Records carried by one Kafka message of a batch.
BATCH_CHUNK_SIZE = _int("BATCH_CHUNK_SIZE", 500, minimum=1)
#: Secret that signs submission and batch ids, so that the API can tell its own ids from made-up ones.
ID_SECRET = _str("ID_SECRET", "change-me-in-production")
#: Seconds a client is told to wait (``Retry-After``) when Kafka cannot take a submission.
RETRY_AFTER_SECONDS = _int("RETRY_AFTER_SECONDS", 5, minimum=1)
#: Longest wait of a ``POST /api/user`` for others to share its Kafka message, in milliseconds; 0 sends
#: every post on its own.  A post waits only while another send is in flight (group commit).
SINGLE_LINGER_MS = _int("SINGLE_LINGER_MS", 5, minimum=0)
#: Most single posts carried by one Kafka message.
SINGLE_MAX_RECORDS = _int("SINGLE_MAX_RECORDS", 100, minimum=1)
#: Seconds an ``Idempotency-Key`` is remembered after its first use: within them a post with the same key
#: and body is the same submission; after them the key is free again.
IDEMPOTENCY_KEY_RETENTION_S = _int("IDEMPOTENCY_KEY_RETENTION_S", 24 * 3600, minimum=1)

# --- Database ----------------------------------------------------------------------------------------------
#: PostgreSQL address; ``postgres://`` and ``postgresql://`` both work.
DATABASE_URL = _database_url(os.environ)
#: Fields that together make a user unique (the unique index of the ``users`` table).
UNIQUE_FIELDS = _list("UNIQUE_FIELDS", "name,age")
#: Largest ``additional_info`` kept for a user, in bytes of JSON.
MAX_ADDITIONAL_INFO_BYTES = _int("MAX_ADDITIONAL_INFO_BYTES", 16 * 1024, minimum=0)
#: Seconds an invalid record of a batch (personal data, as the client sent it) is kept for the batch's
#: invalid-rows file after it was processed; then it is deleted.  0 keeps none.
INVALID_RECORD_RETENTION_S = _int("INVALID_RECORD_RETENTION_S", 7 * 24 * 3600, minimum=0)

# --- Kafka -------------------------------------------------------------------------------------------------
_ENV = os.environ
#: Kafka bootstrap servers (``host:port`` list); Heroku's ``KAFKA_URL`` is understood too.
KAFKA_BOOTSTRAP_SERVERS = _kafka_servers(_ENV)
#: Prefix for every topic and consumer group (Heroku's multi-tenant Kafka needs ``KAFKA_PREFIX``).
KAFKA_TOPIC_PREFIX = _str("KAFKA_TOPIC_PREFIX", _str("KAFKA_PREFIX", ""))
#: Consumer group the workers join (prefixed like topics); one group serves every queue.
KAFKA_GROUP_ID = _str("KAFKA_GROUP_ID", "bup-workers")
#: The stable name of this worker host, for static group membership (empty: dynamic membership): a worker
#: restarted within the session timeout (10 s) gets its partitions back with no rebalance, but one stopped
#: for good leaves its partitions idle that long.  Set, or on Heroku the dyno name when
#: ``KAFKA_STATIC_MEMBERSHIP`` is true.  That defaults to whether ``KAFKA_GROUP_INSTANCE_ID`` is set: a
#: graceful restart of a dynamic member costs two rebalances of hundredths of a second, while a Heroku
#: dyno's restart may outlast the 10 s and every scale-in would stall (docs/operating.md, "Restarts and
#: static membership").
KAFKA_GROUP_INSTANCE_ID = _group_instance_id(_ENV)
#: How workers share a queue: ``classic`` consumer groups (a partition per worker process, offsets
#: committed; any Kafka) or ``share`` groups (KIP-932: any number of workers per partition, an outcome per
#: message; Kafka 4.1+ with ``share.version=1``).  A share group is named ``<group>.share``.
KAFKA_GROUP_TYPE = _choice("KAFKA_GROUP_TYPE", "classic", ("classic", "share"))
#: Client id reported to Kafka.
KAFKA_CLIENT_ID = _str("KAFKA_CLIENT_ID", "batch-user-processing")
#: Whether the app creates the topics it needs.  False when the Kafka service's operator makes them (Heroku's
#: multi-tenant plans): the topics are then looked up, and a missing one is named with how to make it.  Even
#: when true, a Kafka that refuses for want of rights is taken the same way.
KAFKA_CREATE_TOPICS = _bool("KAFKA_CREATE_TOPICS", True)
#: Partitions of each topic the broker creates (existing topics are used as they are; docs/scaling.md).
KAFKA_PARTITIONS = _int("KAFKA_PARTITIONS", 12, minimum=1)
#: Replication factor of each topic the broker creates.
KAFKA_REPLICATION_FACTOR = _int("KAFKA_REPLICATION_FACTOR", 1, minimum=1)
#: ``min.insync.replicas`` of each topic the broker creates; 0 means 2 when the replication factor is 3 or
#: more, else the Kafka brokers' default.
KAFKA_MIN_INSYNC_REPLICAS = _int("KAFKA_MIN_INSYNC_REPLICAS", 0, minimum=0)
#: Retention of the failed-message (dead-letter) topics, in milliseconds (default 14 days).
KAFKA_FAILED_RETENTION_MS = _int("KAFKA_FAILED_RETENTION_MS", 14 * 24 * 3600 * 1000, minimum=-1)
#: How long ``enqueue`` waits for Kafka's acknowledgement before it raises, in milliseconds.
KAFKA_SEND_TIMEOUT_MS = _int("KAFKA_SEND_TIMEOUT_MS", 20_000, minimum=1)
#: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
KAFKA_SECURITY_PROTOCOL = _kafka_security_protocol(_ENV)
#: ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512`` with a ``SASL_*`` protocol.
KAFKA_SASL_MECHANISM = _str("KAFKA_SASL_MECHANISM", "")
KAFKA_SASL_USERNAME = _str("KAFKA_SASL_USERNAME", "")
KAFKA_SASL_PASSWORD = _str("KAFKA_SASL_PASSWORD", "")
#: PEM text of the CA (Heroku: ``KAFKA_TRUSTED_CERT``), client certificate and key.
KAFKA_TRUSTED_CERT = _str("KAFKA_TRUSTED_CERT", "")
KAFKA_CLIENT_CERT = _str("KAFKA_CLIENT_CERT", "")
KAFKA_CLIENT_CERT_KEY = _str("KAFKA_CLIENT_CERT_KEY", "")
#: Whether to check the broker's hostname against its certificate (Heroku's certificates do not name it).
KAFKA_SSL_CHECK_HOSTNAME = _bool("KAFKA_SSL_CHECK_HOSTNAME", "KAFKA_URL" not in _ENV)
#: Any other kafka-python option, as a JSON object.
KAFKA_OPTIONS = _kafka_options(_ENV)

# --- Workers -----------------------------------------------------------------------------------------------
#: Worker processes and threads per process started by the Procfile's ``worker`` line.
WORKER_PROCESSES = _int("WORKER_PROCESSES", 2, minimum=1)
WORKER_THREADS = _int("WORKER_THREADS", 8, minimum=1)
#: Retries of a message whose actor failed with a transient error, and the backoff bounds in milliseconds.
MAX_RETRIES = _int("MAX_RETRIES", 8, minimum=0)
MIN_BACKOFF_MS = _int("MIN_BACKOFF_MS", 1_000, minimum=0)
MAX_BACKOFF_MS = _int("MAX_BACKOFF_MS", 60_000, minimum=0)
#: Port the worker's Prometheus exporter listens on (Dramatiq's ``dramatiq_prom_port``); 0 turns it off.
WORKER_METRICS_PORT = _int("WORKER_METRICS_PORT", 9191, minimum=0)

# --- Logging -----------------------------------------------------------------------------------------------
#: Python logging level name.
LOG_LEVEL = _str("LOG_LEVEL", "INFO").upper()


# --- The web's view --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WebSettings:
    """What the web process reads, as one object (``web.app.create_app(config=...)``).

    Every default is a value read above, so :data:`WEB` is the environment's; tests build their own with
    ``dataclasses.replace(WEB, max_body_bytes=...)`` or by naming the fields.
    """

    api_token: str = API_TOKEN
    id_secret: str = ID_SECRET
    max_body_bytes: int = MAX_BODY_BYTES
    max_batch_bytes: int = MAX_BATCH_BYTES
    max_batch_records: int = MAX_BATCH_RECORDS
    batch_chunk_size: int = BATCH_CHUNK_SIZE
    retry_after_seconds: int = RETRY_AFTER_SECONDS
    single_linger_ms: int = SINGLE_LINGER_MS
    single_max_records: int = SINGLE_MAX_RECORDS
    idempotency_key_retention_s: int = IDEMPOTENCY_KEY_RETENTION_S
    invalid_record_retention_s: int = INVALID_RECORD_RETENTION_S
    #: Longest wait for one broker call before answering 503, in seconds: Kafka's send timeout plus slack.
    enqueue_timeout_seconds: float = KAFKA_SEND_TIMEOUT_MS / 1000 + 2


#: The web's settings, built once from the environment.
WEB = WebSettings()
