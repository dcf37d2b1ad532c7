"""``python -m bootstrap`` = ``hearth bootstrap`` (handy for tests and containers)."""

from p2pnode.cli.net import bootstrap_main

if __name__ == "__main__":
    bootstrap_main()
