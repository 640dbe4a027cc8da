"""The mitmproxy addon (`llm_metrics.py`) and the pure parsing code it drives."""
