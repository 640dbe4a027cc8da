"""Azure OpenAI deployment paths: `/openai/deployments/{deployment}/chat/completions`.

Azure speaks the OpenAI formats, but the model a caller asks for is the deployment named in the
path (the body's `model` is ignored there); the response names the underlying model
(`gpt-4.1-mini-2025-04-14`), and a stream's first chunk has an empty `model`, which the OpenAI
parsers already skip.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from .base import non_empty_str

_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")


def deployment(path: str) -> str | None:
    found = _DEPLOYMENT.search(path)
    return unquote(found.group(1)) if found else None


def requested_model(path: str, body: dict[str, Any]) -> str | None:
    """The deployment on a classic Azure path, else the body's `model`."""
    return deployment(path) or non_empty_str(body.get("model"))
