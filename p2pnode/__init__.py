"""Hearth node: networking, serving core, power governor and the homeowner CLI."""
