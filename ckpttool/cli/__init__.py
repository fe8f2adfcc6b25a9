"""Thin Click commands over the library. Each command lives in its own module, imported only when used."""
