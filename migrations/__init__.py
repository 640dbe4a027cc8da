"""Versioned schema migrations for the metrics database."""

from .backup import DEFAULT_KEEP, BackupError, list_backups, make_backup, restore
from .registry import STEPS, Step
from .runner import (
    CURRENT_SCHEMA_VERSION,
    MigrationError,
    NewerSchemaError,
    UpgradeResult,
    applied_versions,
    current_version,
    lineage,
    pending,
    upgrade,
)

__all__ = [
    "CURRENT_SCHEMA_VERSION",
    "DEFAULT_KEEP",
    "STEPS",
    "BackupError",
    "MigrationError",
    "NewerSchemaError",
    "Step",
    "UpgradeResult",
    "applied_versions",
    "current_version",
    "lineage",
    "list_backups",
    "make_backup",
    "pending",
    "restore",
    "upgrade",
]
