"""Hearth test suite (mirrors the packages)."""
