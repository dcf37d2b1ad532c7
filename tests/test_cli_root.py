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


def _commands(cmd: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    found = [(path, cmd)]
    if isinstance(getattr(cmd, "commands", None), dict):  # a group (typer's own, not click's)
        for name, sub in sorted(cmd.commands.items()):  # type: ignore[attr-defined]
            found += _commands(sub, (*path, name))
    return found


def test_every_help_text_shows_its_square_brackets() -> None:
    """Rich markup reads `[power]` as a style tag and drops it: help texts escape it.

    Every command's and option's help is rendered, and each `[...]` written in it must
    appear as written (a help text with an unescaped `[word]` loses it).
    """
    import re

    import typer.main
    from typer.testing import CliRunner

    from p2pnode.cli.app import app

    runner = CliRunner()
    checked = 0
    for path, cmd in _commands(typer.main.get_command(app)):
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]  # type: ignore[attr-defined]
        wanted = {  # each bracket with the word before it, as the reader should see them
            m.replace("\\[", "[") for t in texts for m in re.findall(r"\S+ \\?\[[^\]\s]*\]", t)
        }
        result = runner.invoke(app, [*path, "--help"], env={"TERMINAL_WIDTH": "200"})
        assert result.exit_code == 0, (path, result.output)
        for bracket in wanted:
            assert bracket in result.output, (path, bracket)
            checked += 1
    assert checked >= 1 and len(_commands(typer.main.get_command(app))) > 30
    shown = runner.invoke(app, ["power", "status", "--help"], env={"TERMINAL_WIDTH": "200"})
    assert "Read the [power] section" in shown.output
    assert "with a [power] section" in shown.output
