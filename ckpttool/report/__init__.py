"""Rendering of command results: tables, output formats, progress, plots."""
