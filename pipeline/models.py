"""What the pipeline stores: users, the outcome of every submission, and the size of every batch."""

from __future__ import annotations

import datetime

from peewee import (
    BigAutoField,
    CharField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField

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


class Submission(_Base):
    """The outcome of one submitted record: ``stored``, ``duplicate``, ``invalid`` or ``failed``."""

    id = CharField(primary_key=True, max_length=128)
    batch_id = CharField(null=True, max_length=128)
    row = IntegerField(null=True)
    status = CharField(max_length=16)
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
