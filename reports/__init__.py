"""`python -m reports`: the terminal report over the metrics database."""
