"""``python -m bootstrap`` = ``hearth bootstrap`` (handy for tests and containers)."""

from bootstrap.cli import bootstrap_main

if __name__ == "__main__":
    bootstrap_main()
