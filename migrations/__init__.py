"""Versioned schema migrations for the metrics database."""

from .registry import STEPS, Step
from .runner import CURRENT_SCHEMA_VERSION, NewerSchemaError, applied_versions, current_version, pending, upgrade

__all__ = [
    "CURRENT_SCHEMA_VERSION",
    "NewerSchemaError",
    "STEPS",
    "Step",
    "applied_versions",
    "current_version",
    "pending",
    "upgrade",
]
