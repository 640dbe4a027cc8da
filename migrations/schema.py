"""What a database's schema is, what a step promises it will be, and whether the two agree.

Columns are compared by name, type family and nullability, indexes by their column lists; never
by column order, which SQLite's table rebuilds and PostgreSQL's ALTERs do not keep alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import peewee

# Declared types mapped to one family per storage class, so SQLite's "INTEGER" and PostgreSQL's
# "integer"/"serial" compare equal.
_FAMILIES = (
    ("BOOL", "boolean"),
    ("INT", "integer"),
    ("SERIAL", "integer"),
    ("CHAR", "text"),
    ("TEXT", "text"),
    ("CLOB", "text"),
    ("REAL", "real"),
    ("FLOA", "real"),
    ("DOUB", "real"),
    ("NUMERIC", "real"),
)

META_TABLES = frozenset({"schema_version", "sqlite_sequence"})


def type_family(declared: str) -> str:
    upper = declared.upper()
    for needle, family in _FAMILIES:
        if needle in upper:
            return family
    return upper.lower() or "any"


@dataclass(frozen=True)
class Column:
    family: str
    nullable: bool


@dataclass
class Table:
    columns: dict[str, Column] = field(default_factory=dict)
    indexes: set[tuple[str, ...]] = field(default_factory=set)


Schema = dict[str, Table]


def snapshot(db: peewee.Database) -> Schema:
    """The user tables of `db` (history and engine bookkeeping left out)."""
    schema: Schema = {}
    for name in db.get_tables():
        if name in META_TABLES or name.startswith("_backup_"):
            continue
        table = Table()
        for col in db.get_columns(name):
            table.columns[col.name] = Column(type_family(col.data_type), col.null and not col.primary_key)
        primary = tuple(db.get_primary_keys(name))
        for index in db.get_indexes(name):
            if tuple(index.columns) != primary:  # PostgreSQL lists the key's own index, SQLite not
                table.indexes.add(tuple(index.columns))
        schema[name] = table
    return schema


def differences(actual: Schema, expected: Schema) -> list[str]:
    """Human-readable differences; empty when `actual` is what `expected` promises."""
    problems = []
    for name in sorted(set(expected) - set(actual)):
        problems.append(f"table {name} is missing")
    for name in sorted(set(actual) - set(expected)):
        problems.append(f"table {name} was not expected")
    for name in sorted(set(actual) & set(expected)):
        have, want = actual[name], expected[name]
        for col in sorted(set(want.columns) - set(have.columns)):
            problems.append(f"{name}.{col} is missing")
        for col in sorted(set(have.columns) - set(want.columns)):
            problems.append(f"{name}.{col} was not expected")
        for col in sorted(set(have.columns) & set(want.columns)):
            if have.columns[col] != want.columns[col]:
                problems.append(f"{name}.{col} is {have.columns[col]}, expected {want.columns[col]}")
        for index in sorted(want.indexes - have.indexes):
            problems.append(f"index on {name}({', '.join(index)}) is missing")
    return problems


def row_counts(db: peewee.Database, tables) -> dict[str, int]:
    return {t: db.execute_sql(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def table_digest(db: peewee.Database, table: str, columns: list[str] | None = None) -> str:
    """A digest of every row's values in `columns` (default: all), in the order of the first
    column (the primary key): equal digests, equal contents."""
    columns = columns or [c.name for c in db.get_columns(table)]
    order = ", ".join(f'"{c}"' for c in columns)
    digest = hashlib.sha256()
    for row in db.execute_sql(f'SELECT {order} FROM "{table}" ORDER BY 1'):
        digest.update(repr(row).encode())
    return digest.hexdigest()


# -- what a step promises ------------------------------------------------------------------


@dataclass(frozen=True)
class Creates:
    """The step creates `table` with these columns (name -> (family, nullable)) and indexes."""

    table: str
    columns: dict[str, tuple[str, bool]]
    indexes: tuple[tuple[str, ...], ...] = ()

    def apply(self, schema: Schema) -> None:
        if self.table not in schema:  # `CREATE TABLE IF NOT EXISTS` on an adopted database
            schema[self.table] = Table({n: Column(f, nullable) for n, (f, nullable) in self.columns.items()})
        schema[self.table].indexes.update(self.indexes)


@dataclass(frozen=True)
class AddsColumns:
    table: str
    columns: dict[str, str]  # name -> type family; added columns are nullable

    def apply(self, schema: Schema) -> None:
        for name, family in self.columns.items():
            schema[self.table].columns[name] = Column(family, True)


@dataclass(frozen=True)
class MakesNullable:
    table: str
    column: str

    def apply(self, schema: Schema) -> None:
        old = schema[self.table].columns[self.column]
        schema[self.table].columns[self.column] = Column(old.family, True)


@dataclass(frozen=True)
class AddsIndex:
    table: str
    columns: tuple[str, ...]

    def apply(self, schema: Schema) -> None:
        schema[self.table].indexes.add(self.columns)


def promised(before: Schema, promises) -> Schema:
    """The schema a step promises, given the schema it starts from."""
    after = {name: Table(dict(t.columns), set(t.indexes)) for name, t in before.items()}
    for promise in promises:
        promise.apply(after)
    return after


def columns_of_create(sql: str) -> dict[str, tuple[str, bool]]:
    """Column promises read from a frozen `CREATE TABLE` of `name TYPE [NOT NULL]` lines."""
    columns = {}
    for line in sql.splitlines():
        words = line.strip().rstrip(",").split()
        if len(words) < 2 or words[0].upper() in ("CREATE", ")", "PRIMARY", "UNIQUE", "FOREIGN"):
            continue
        declared = words[1]
        not_null = "NOT NULL" in line.upper() or "PRIMARY KEY" in line.upper()
        columns[words[0]] = (type_family(declared), not not_null)
    return columns
