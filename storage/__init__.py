"""The metrics store: peewee models, one way to open a database, and the background writer."""

from .db import DEFAULT_DB_PATH, ENV_VAR, default_location, enable_wal, open_database
from .models import MODELS, CompletionRequest
from .writer import RowWriter

__all__ = [
    "DEFAULT_DB_PATH",
    "ENV_VAR",
    "MODELS",
    "CompletionRequest",
    "RowWriter",
    "default_location",
    "enable_wal",
    "open_database",
]
