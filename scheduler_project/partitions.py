"""Monthly range partitions of a PostgreSQL table (declarative partitioning), by a timestamptz column.

Each month is a partition named `<table>_pYYYY_MM` covering [first of the month, first of the next) in
UTC; `<table>_default` takes every row no month partition covers (rows kept past the drop of their month,
or a month not created yet). Creating a month moves the rows of its range out of the default partition
first, so a partition can always be created, however late. Detaching and dropping belong to the caller,
which decides what to keep (monitoring.services.history). Everything here takes a DB-API cursor, so the
migrations that convert the tables and the periodic maintenance share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Cursor = Any  # a DB-API cursor of the Django connection (or of a migration's schema editor)


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def of(cls, moment: datetime) -> Month:
        moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)

    def shift(self, months: int) -> Month:
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.shift(1).start

    def suffix(self) -> str:
        return f"p{self.year:04d}_{self.month:02d}"


def _literal(moment: datetime) -> str:
    # DDL takes no parameters; an ISO timestamp with an explicit UTC offset reads the same in any TimeZone.
    return "'" + moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00") + "'"


def _quote(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"not a plain SQL name: {name!r}")
    return f'"{name}"'


def partition_name(table: str, month: Month) -> str:
    return f"{table}_{month.suffix()}"


def default_name(table: str) -> str:
    return f"{table}_default"


def partitions(cursor: Cursor, table: str) -> dict[Month, str]:
    """The month partitions of `table` that follow our naming, by month (others are left alone)."""
    cursor.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass",
        [table],
    )
    pattern = re.compile(rf"{re.escape(table)}_p(\d{{4}})_(\d{{2}})")
    found: dict[Month, str] = {}
    for (name,) in cursor.fetchall():
        match = pattern.fullmatch(name)
        if match:
            found[Month(int(match[1]), int(match[2]))] = name
    return found


def is_partitioned(cursor: Cursor, table: str) -> bool:
    cursor.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", [table])
    row = cursor.fetchone()
    return bool(row) and row[0] == "p"


def partition_create(cursor: Cursor, table: str, key: str, month: Month) -> bool:
    """Create `month`'s partition (taking the default partition's rows of its range); False if it exists."""
    if month in partitions(cursor, table):
        return False
    name, default = _quote(partition_name(table, month)), _quote(default_name(table))
    lower, upper = _literal(month.start), _literal(month.end)
    cursor.execute(f"CREATE TABLE {name} (LIKE {_quote(table)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {default} WHERE {_quote(key)} >= {lower} AND {_quote(key)} < {upper} "
        f"RETURNING *) INSERT INTO {name} SELECT * FROM moved"
    )
    # The partition constraint as a CHECK first: ATTACH then trusts it instead of scanning the table.
    check = _quote(f"{partition_name(table, month)}_range")
    cursor.execute(
        f"ALTER TABLE {name} ADD CONSTRAINT {check} "
        f"CHECK ({_quote(key)} IS NOT NULL AND {_quote(key)} >= {lower} AND {_quote(key)} < {upper})"
    )
    cursor.execute(
        f"ALTER TABLE {_quote(table)} ATTACH PARTITION {name} FOR VALUES FROM ({lower}) TO ({upper})"
    )
    cursor.execute(f"ALTER TABLE {name} DROP CONSTRAINT {check}")
    return True


def partition_detach(cursor: Cursor, table: str, month: Month) -> str:
    """Detach `month`'s partition: from now on a table of its own (the caller empties and drops it)."""
    name = partition_name(table, month)
    cursor.execute(f"ALTER TABLE {_quote(table)} DETACH PARTITION {_quote(name)}")
    return name


def table_partition(
    cursor: Cursor, table: str, *, key: str, unique: dict[str, list[str]], now: datetime
) -> None:
    """Convert a plain table (id primary key) into one partitioned by month on `key`, keeping its rows.

    The primary key becomes (id, key) and each unique constraint in `unique` (name: columns) must name the
    key: PostgreSQL enforces uniqueness per partition only. The id keeps counting from where it was (a
    sequence instead of the identity, which partitioned tables of PostgreSQL 15 cannot have). Indexes are
    recreated as they were; foreign keys from the table are kept; those *into* it cannot exist any more
    and are dropped (the ORM's on_delete still cascades; retention handles dropped partitions). Months
    with rows get a partition, and this month and the next two.
    """
    for name, columns in unique.items():
        if key not in columns:
            raise ValueError(f"unique constraint {name} of a partitioned table must include {key}")

    def partition(t: str, o: str) -> None:
        cursor.execute(
            f"CREATE TABLE {t} (LIKE {o} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            f"PARTITION BY RANGE ({_quote(key)})"
        )
        cursor.execute(f"CREATE TABLE {_quote(default_name(table))} PARTITION OF {t} DEFAULT")
        cursor.execute(f"SELECT DISTINCT date_trunc('month', {_quote(key)} AT TIME ZONE 'UTC') FROM {o}")
        months = {Month(row[0].year, row[0].month) for row in cursor.fetchall()}
        current = Month.of(now)
        for month in sorted(months | {current.shift(n) for n in range(3)}):
            partition_create(cursor, table, key, month)

    _rebuild(cursor, table, create=partition, primary=["id", key], unique=unique)


def table_unpartition(cursor: Cursor, table: str, *, unique: dict[str, list[str]]) -> None:
    """The reverse of table_partition: one plain table again, primary key (id)."""

    def plain(t: str, o: str) -> None:
        cursor.execute(f"CREATE TABLE {t} (LIKE {o} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")

    _rebuild(cursor, table, create=plain, primary=["id"], unique=unique)


def _rebuild(
    cursor: Cursor, table: str, *, create: Any, primary: list[str], unique: dict[str, list[str]]
) -> None:
    """Rebuild `table` under its name: `create(new, old)` makes the new table, then rows, id sequence,
    keys, indexes and the foreign keys from it come back as they were."""
    old = f"{table}_old"
    t, o = _quote(table), _quote(old)
    cursor.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype IN ('p', 'u'))",
        [table, table],
    )
    indexes = [row[0] for row in cursor.fetchall()]  # they name the table: after the rename, the new one
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
        "AND contype = 'f' AND confrelid <> %s::regclass AND conparentid = 0",
        [table, table],
    )
    foreign = cursor.fetchall()
    cursor.execute(f"ALTER TABLE {t} RENAME TO {o}")
    create(t, o)
    cursor.execute(f"INSERT INTO {t} SELECT * FROM {o}")
    cursor.execute(f"SELECT coalesce(max(id), 0) FROM {o}")
    last_id = cursor.fetchone()[0]
    cursor.execute(f"DROP TABLE {o} CASCADE")  # its id sequence, its partitions, the foreign keys into it
    sequence = f"{table}_id_seq"
    cursor.execute(f"CREATE SEQUENCE {_quote(sequence)} OWNED BY {t}.id")
    cursor.execute("SELECT setval(%s, %s, %s)", [sequence, max(last_id, 1), last_id > 0])
    cursor.execute(f"ALTER TABLE {t} ALTER COLUMN id SET DEFAULT nextval('{sequence}'::regclass)")
    key = ", ".join(map(_quote, primary))
    cursor.execute(f"ALTER TABLE {t} ADD CONSTRAINT {_quote(table + '_pkey')} PRIMARY KEY ({key})")
    for name, columns in unique.items():
        cursor.execute(
            f"ALTER TABLE {t} ADD CONSTRAINT {_quote(name)} UNIQUE ({', '.join(map(_quote, columns))})"
        )
    for definition in indexes:  # a partitioned table's read "ON ONLY": here they are for every partition
        cursor.execute(definition.replace(" ON ONLY ", " ON ", 1))
    for name, definition in foreign:
        cursor.execute(f"ALTER TABLE {t} ADD CONSTRAINT {_quote(name)} {definition}")
