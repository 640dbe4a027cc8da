"""The HTTP client library the installed `openai` SDK is built on: `httpx` for openai 1.x
(Python 3.11, beside mitmproxy 11), `httpx2` for openai 3.x (Python >= 3.12)."""

from __future__ import annotations

import importlib

import openai

httpx = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])
