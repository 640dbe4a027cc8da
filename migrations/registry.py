"""The one registry of numbered, named schema steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import peewee
from playhouse.migrate import SchemaMigrator

StepFunction = Callable[[peewee.Database, SchemaMigrator], None]


@dataclass(frozen=True)
class Step:
    version: int
    name: str
    description: str
    apply: StepFunction
    # What the schema looks like after the step (migrations.schema promise objects); checked
    # after the step runs, by column name, type and nullability, and index columns.
    promises: tuple = ()
    # Tables the step rebuilds (copy, drop, rename): backed up inside the database first.
    rewrites: tuple[str, ...] = ()


STEPS: list[Step] = []


def step(
    version: int,
    name: str,
    description: str,
    *,
    promises: tuple = (),
    rewrites: tuple[str, ...] = (),
) -> Callable[[StepFunction], StepFunction]:
    """Registers a step; versions must be consecutive and names unique. Returns the function."""

    def register(fn: StepFunction) -> StepFunction:
        if any(s.name == name for s in STEPS):
            raise ValueError(f"duplicate migration name {name!r}")
        expected = len(STEPS) + 1
        if version != expected:
            raise ValueError(f"migration {name!r} has version {version}, expected {expected}")
        STEPS.append(Step(version, name, description, fn, tuple(promises), tuple(rewrites)))
        return fn

    return register
