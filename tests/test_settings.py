"""``pipeline/settings.py``: the values it derives from more than one variable."""

from __future__ import annotations

import pytest

from tests.test_deploy_files import load_settings


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ""),
        ({"KAFKA_GROUP_INSTANCE_ID": "worker-0"}, "worker-0"),
        ({"KAFKA_GROUP_INSTANCE_ID": "worker-0", "KAFKA_STATIC_MEMBERSHIP": "false"}, ""),
        # Heroku's dyno name only when asked for...
        ({"DYNO": "worker.1"}, ""),
        ({"DYNO": "worker.1", "KAFKA_STATIC_MEMBERSHIP": "true"}, "worker.1"),
        ({"DYNO": "worker.1", "KAFKA_GROUP_INSTANCE_ID": "w1", "KAFKA_STATIC_MEMBERSHIP": "true"}, "w1"),
        # ...and never a one-off dyno's, numbered anew each time
        ({"DYNO": "run.4711", "KAFKA_STATIC_MEMBERSHIP": "true"}, ""),
        ({"DYNO": "scheduler.2", "KAFKA_STATIC_MEMBERSHIP": "true"}, ""),
        # (nothing to go by: dynamic, even when asked for static)
        ({"KAFKA_STATIC_MEMBERSHIP": "true"}, ""),
    ],
)
def test_the_group_instance_id_is_named_or_herokus_dyno_name_when_allowed(env, expected):
    settings, _ = load_settings(env)
    found = settings.KAFKA_GROUP_INSTANCE_ID
    assert found == expected


def test_a_static_membership_flag_that_is_not_a_boolean_is_refused():
    with pytest.raises(ValueError, match="KAFKA_STATIC_MEMBERSHIP"):
        load_settings({"KAFKA_STATIC_MEMBERSHIP": "maybe"})


@pytest.mark.parametrize(("raw", "expected"), [(None, "classic"), ("share", "share"), ("Classic", "classic")])
def test_the_group_type_is_classic_unless_share_is_asked_for(raw, expected):
    settings, _ = load_settings({} if raw is None else {"KAFKA_GROUP_TYPE": raw})
    assert settings.KAFKA_GROUP_TYPE == expected


def test_a_group_type_that_is_neither_is_refused():
    with pytest.raises(ValueError, match="KAFKA_GROUP_TYPE must be one of classic, share"):
        load_settings({"KAFKA_GROUP_TYPE": "queue"})
