"""Reports computed by PostgreSQL itself."""

from __future__ import annotations

from typing import Any

from pipeline.db import database

#: Age groups, with their bounds (inclusive) as the report states them.
AGE_GROUPS = [
    ("under 20", "age < 20", None, 19),
    ("20 to 40", "age BETWEEN 20 AND 40", 20, 40),
    ("41 to 60", "age BETWEEN 41 AND 60", 41, 60),
    ("over 60", "age > 60", 61, None),
]

# Built from the constant AGE_GROUPS above, never from input.
_QUERY = (
    "SELECT count(*), "  # noqa: S608
    + ", ".join(f"count(*) FILTER (WHERE {cond})" for _, cond, _, _ in AGE_GROUPS)
    + " FROM users"
)


def age_distribution() -> dict[str, Any]:
    """The share of stored users per age group, in one query: ``{"total", "groups": [...]}``."""
    with database.connection_context():
        row = database.execute_sql(_QUERY).fetchone()
    total, counts = row[0], row[1:]
    return {
        "total": total,
        "groups": [
            {
                "group": label,
                "min_age": low,
                "max_age": high,
                "count": count,
                "share": round(count / total, 4) if total else 0.0,
            }
            for (label, _, low, high), count in zip(AGE_GROUPS, counts, strict=True)
        ],
    }
