"""What the pipeline stores: users, the outcome of every submission, the size of every batch, and the
``Idempotency-Key`` of every keyed post."""

from __future__ import annotations

import datetime
from typing import Any

from peewee import (
    BigAutoField,
    CharField,
    Check,
    CompositeKey,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField, JSONField

from pipeline.contract import OUTCOMES, Status
from pipeline.db import database


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class _Base(Model):
    class Meta:
        database = database


class User(_Base):
    """A stored user; the columns named by ``settings.UNIQUE_FIELDS`` are unique together."""

    id = BigAutoField()
    name = TextField()
    age = IntegerField()
    email = TextField(null=True)
    phone_number = TextField(null=True)
    address = BinaryJSONField(null=True, index=False)
    additional_info = BinaryJSONField(default=dict, index=False)
    created_at = DateTimeTZField(default=_now)

    class Meta:
        table_name = "users"


class StatusField(CharField):
    """A submission's :class:`~pipeline.contract.Status`: its string in the database, the enum in Python.

    The column admits only the outcomes (``CHECK``, migration ``0004_submission_status_check``).
    """

    def __init__(self, **kwargs: Any) -> None:
        values = ", ".join(f"'{status}'" for status in OUTCOMES)
        kwargs.setdefault("constraints", [Check(f"status IN ({values})")])
        super().__init__(max_length=16, **kwargs)

    def db_value(self, value: Any) -> str | None:
        return None if value is None else str(value)  # the plain string, whatever the driver makes of enums

    def python_value(self, value: Any) -> Status | None:
        return None if value is None else Status(value)


class Submission(_Base):
    """The outcome of one submitted record: one of ``contract.OUTCOMES``."""

    id = CharField(primary_key=True, max_length=128)
    batch_id = CharField(null=True, max_length=128)
    row = IntegerField(null=True)
    status = StatusField()
    errors = BinaryJSONField(default=list, index=False)
    user = ForeignKeyField(User, null=True, column_name="user_id", on_delete="SET NULL")
    created_at = DateTimeTZField(default=_now)
    updated_at = DateTimeTZField(default=_now)

    class Meta:
        table_name = "submissions"
        indexes = ((("batch_id", "status", "row"), False),)


class Batch(_Base):
    """A batch accepted by the API: how many records it holds, registered once all are in Kafka."""

    id = CharField(primary_key=True, max_length=128)
    count = IntegerField()
    source = CharField(max_length=16, null=True)
    created_at = DateTimeTZField(default=_now)

    class Meta:
        table_name = "batches"


class InvalidRecord(_Base):
    """An invalid record of a batch as its client sent it (``pipeline/invalid_records.py``), kept for
    ``INVALID_RECORD_RETENTION_S``: ``data`` when it parsed as an object, else ``raw``."""

    id = CharField(primary_key=True, max_length=128)
    batch_id = CharField(max_length=128, index=True)
    row = IntegerField()
    data = BinaryJSONField(null=True, index=False)
    raw = BinaryJSONField(null=True, index=False)
    created_at = DateTimeTZField(default=_now, index=True)

    class Meta:
        table_name = "invalid_records"


class InvalidRecordHeader(_Base):
    """The header of a CSV batch that has kept invalid records, its cells as uploaded."""

    batch_id = CharField(primary_key=True, max_length=128)
    header = BinaryJSONField(index=False)
    created_at = DateTimeTZField(default=_now, index=True)

    class Meta:
        table_name = "invalid_record_headers"


class IdempotencyKey(_Base):
    """An ``Idempotency-Key`` of a caller and the submission it stands for (``web/idempotency.py``).

    ``state`` is ``in_flight`` while a web process enqueues it (``locked_until`` bounds how long that
    process is trusted), ``accepted`` once it was answered ``202`` (``answer`` holds that body), ``unsure``
    when the enqueue failed and may still have reached Kafka.
    """

    scope = CharField(max_length=64)
    key = CharField(max_length=255)
    fingerprint = CharField(max_length=64)
    kind = CharField(max_length=8, constraints=[Check("kind IN ('single', 'batch')")])
    submission_id = CharField(max_length=128)
    state = CharField(max_length=16, constraints=[Check("state IN ('in_flight', 'accepted', 'unsure')")])
    answer = JSONField(null=True)
    locked_until = DateTimeTZField()
    created_at = DateTimeTZField(default=_now, index=True)

    class Meta:
        table_name = "idempotency_keys"
        primary_key = CompositeKey("scope", "key")


#: API field names that may form the unique key, and their columns.
UNIQUE_FIELD_COLUMNS = {"name": "name", "age": "age", "email": "email", "phoneNumber": "phone_number"}


def unique_columns(fields: list[str]) -> list[str]:
    """The columns of the unique key for the configured field names (``phoneNumber`` -> ``phone_number``)."""
    columns = []
    for field in fields:
        column = UNIQUE_FIELD_COLUMNS.get(field) or (
            field if field in UNIQUE_FIELD_COLUMNS.values() else None
        )
        if column is None:
            raise ValueError(f"UNIQUE_FIELDS: {field!r} is not one of {sorted(UNIQUE_FIELD_COLUMNS)}")
        if column not in columns:
            columns.append(column)
    return columns
