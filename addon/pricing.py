"""`cost_usd` of one call, from the `genai-prices` package's bundled price data.

No price table lives in this project, and nothing is fetched at run time: genai-prices ships its
data as a Python module, read once (about 0.2 s; `warm()` does it at start-up so the first call
does not stall the proxy). Prices depend on the date, so a call is priced as of when it was made.
`prompt_tokens` is all input here, cache reads and writes included, which is what genai-prices
expects as `input_tokens`: it takes the cached parts out and prices them at the provider's
cache-read and cache-write rates. An unknown provider or model gives None, never a guess.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from .prices import CUSTOM, GENAI_PRICES, PriceBook

# This project's provider names -> genai-prices provider ids.
_PROVIDER_IDS = {
    "openai": "openai",
    "azure-openai": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "vertex-ai": "google",
    "openrouter": "openrouter",
    "groq": "groq",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "together": "together",
    "fireworks": "fireworks",
    "xai": "x-ai",
    "perplexity": "perplexity",
    "cerebras": "cerebras",
    "aws-bedrock": "aws",
}
# Servers anyone can run (vLLM, llama.cpp, Ollama, a gateway), named after the API they speak
# (`openai-compatible`, `anthropic-compatible`, ...): a model name there says nothing about a bill,
# and genai-prices would match `openai-compatible` to OpenAI's list prices. Gemini Code Assist (Gemini
# CLI signed in with a Google account) is a free tier or a subscription: no call has a list price.
_NEVER_PRICED = frozenset({"ollama", "gemini-code-assist"})
_NEVER_PRICED_ENDING = "-compatible"


def price_provider(provider: str | None) -> str | None:
    """The genai-prices provider id; a name a user gave a host (`HOST=NAME`) is passed as is."""
    if not provider or provider in _NEVER_PRICED or provider.endswith(_NEVER_PRICED_ENDING):
        return None
    return _PROVIDER_IDS.get(provider, provider)


def cost_usd(
    *,
    provider: str | None,
    model: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cached_tokens: int | None = None,
    cache_creation_tokens: int | None = None,
    audio_input_tokens: int | None = None,
    cached_audio_tokens: int | None = None,
    audio_output_tokens: int | None = None,
    at: datetime | None = None,
) -> float | None:
    """USD for these counts, or None when the provider, the model or the input is unknown. The
    audio counts are the audio parts of the input, of its cached part and of the output (audio is
    priced apart from text, the Realtime API's models)."""
    provider_id = price_provider(provider)
    if provider_id is None or not model or prompt_tokens is None:
        return None
    from genai_prices import Usage, calc_price

    usage = Usage(
        input_tokens=prompt_tokens,
        cache_read_tokens=cached_tokens or None,
        cache_write_tokens=cache_creation_tokens or None,
        output_tokens=completion_tokens or None,
        input_audio_tokens=audio_input_tokens or None,
        cache_audio_read_tokens=cached_audio_tokens or None,
        output_audio_tokens=audio_output_tokens or None,
    )
    try:
        price = calc_price(usage, model, provider_id=provider_id, genai_request_timestamp=at)
    except (LookupError, ValueError):  # unknown model or provider; counts that do not add up
        return None
    return _usd(price.total_price)


def price_call(
    *,
    provider: str | None,
    host: str | None,
    model: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cached_tokens: int | None = None,
    cache_creation_tokens: int | None = None,
    audio_input_tokens: int | None = None,
    cached_audio_tokens: int | None = None,
    audio_output_tokens: int | None = None,
    at: datetime | None = None,
    book: PriceBook | None = None,
) -> tuple[float | None, str | None]:
    """USD for these counts and where the price came from: the user's prices file first
    (`addon.prices`, which prices audio as text), then genai-prices; (None, None) when neither knows it."""
    if prompt_tokens is None:
        return None, None
    price = book.find(provider, host, model) if book is not None else None
    if price is not None:
        return price.cost(prompt_tokens, completion_tokens, cached_tokens, cache_creation_tokens), CUSTOM
    cost = cost_usd(provider=provider, model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                    cached_tokens=cached_tokens, cache_creation_tokens=cache_creation_tokens,
                    audio_input_tokens=audio_input_tokens, cached_audio_tokens=cached_audio_tokens,
                    audio_output_tokens=audio_output_tokens, at=at)
    return cost, GENAI_PRICES if cost is not None else None


def _usd(value: Decimal) -> float:
    return float(round(value, 12))


def warm() -> str:
    """Loads the price data now rather than on the first call; returns the package version."""
    from genai_prices import __version__, data_snapshot

    data_snapshot.get_snapshot()
    return __version__
