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


STEPS: list[Step] = []


def step(version: int, name: str, description: str) -> Callable[[StepFunction], StepFunction]:
    """Registers a step; versions must be consecutive and names unique. Returns the function."""

    def register(fn: StepFunction) -> StepFunction:
        if any(s.name == name for s in STEPS):
            raise ValueError(f"duplicate migration name {name!r}")
        expected = len(STEPS) + 1
        if version != expected:
            raise ValueError(f"migration {name!r} has version {version}, expected {expected}")
        STEPS.append(Step(version, name, description, fn))
        return fn

    return register
