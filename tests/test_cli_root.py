"""The root CLI answers `--help` without importing heavy libraries."""

import subprocess
import sys


def test_help_lists_bench_and_is_fast() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from p2pnode.cli.app import app; "
            "heavy = {'torch', 'web3', 'libp2p'} & set(sys.modules); print(sorted(heavy))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]", f"CLI import pulled in heavy modules: {out.stdout}"
