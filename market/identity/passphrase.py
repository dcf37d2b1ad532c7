"""Where a keystore passphrase comes from: an environment variable, or a prompt.

Unattended nodes (systemd, containers, CI) set ``HEARTH_PASSPHRASE`` (or the
variable named by ``[identity] passphrase_env`` in ``hearth.toml``); interactive
users are asked on the terminal with the input hidden.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Mapping

from market.identity.errors import PassphraseUnavailable

__all__ = ["DEFAULT_PASSPHRASE_ENV", "resolve_passphrase"]

DEFAULT_PASSPHRASE_ENV = "HEARTH_PASSPHRASE"


def resolve_passphrase(
    env_var: str = DEFAULT_PASSPHRASE_ENV,
    *,
    confirm: bool = False,
    environ: Mapping[str, str] | None = None,
    prompt: Callable[[str], str] | None = None,
    interactive: bool | None = None,
) -> str:
    """The passphrase from ``env_var`` if set and non-empty, else from a hidden prompt.

    With ``confirm`` (creating a keystore) the prompt asks twice and insists on a
    match and a non-empty answer. Raises :class:`PassphraseUnavailable` when the
    variable is unset and there is no terminal.
    """
    env = os.environ if environ is None else environ
    value = env.get(env_var, "")
    if value:
        return value
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        raise PassphraseUnavailable(
            f"no passphrase: set the environment variable {env_var} or run in a terminal"
        )
    ask = prompt or getpass.getpass
    first = ask("Keystore passphrase: ")
    if confirm:
        if not first:
            raise PassphraseUnavailable("an empty passphrase is not allowed")
        if ask("Repeat passphrase: ") != first:
            raise PassphraseUnavailable("the two passphrases differ")
    return first
