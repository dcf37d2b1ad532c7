"""Failures as a person reads them: one ``error: …`` line, exit status 2.

:func:`explain` turns the exceptions the commands expect (a bad or unready config, a
missing keystore or a wrong passphrase, a chain that cannot be reached or that refuses a
transaction, a file that cannot be read, a value refused) into a sentence that keeps the
specific detail and names no Python class. :func:`explained` wraps a block of a command
with it. Anything else is a bug, and keeps its traceback for the bug report.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

__all__ = ["explain", "explained", "fail"]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` in red on stderr and exit with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _words(camel: str) -> str:
    """``PaymentHubWithdrawalNotReady`` -> ``the PaymentHub refused: withdrawal not ready``."""
    for owner in ("PaymentHub", "ProviderRegistry", "ERC20"):
        if camel.startswith(owner) and camel != owner:
            rest = re.sub(r"(?<!^)(?=[A-Z])", " ", camel[len(owner) :]).lower()
            return f"the {owner if owner != 'ERC20' else 'token'} refused: {rest}"
    return f"the contract refused: {camel}"


def _network_reason(text: str) -> str:
    """The human part of a connection error (``Connection refused``, ``timed out``, …)."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if "timed out" in text.lower():
        return "timed out"
    return text


def explain(exc: BaseException, *, rpc_url: str | None = None) -> str | None:
    """One sentence for ``exc``, without its class name; ``None`` if it is not a failure
    the commands expect (a bug).

    ``rpc_url`` (the chain the command talks to) lets a connection failure name it.
    """
    leaves = _leaves(exc)
    if len(leaves) > 1:
        said = [explain(e, rpc_url=rpc_url) for e in leaves]
        return None if None in said else "; ".join(dict.fromkeys(s for s in said if s))
    exc = leaves[0]
    from market.chain.errors import ChainUnavailable, ContractReverted, TransactionDropped
    from market.config import ConfigError
    from market.identity.errors import (
        BindingError,
        IdentityError,
        KeystoreCorrupt,
        PassphraseUnavailable,
    )
    from market.sdk.types import HearthError

    chain = f"the chain at {rpc_url}" if rpc_url else "the chain"
    if isinstance(exc, ConfigError | PassphraseUnavailable):
        return str(exc)
    if isinstance(exc, KeystoreCorrupt | BindingError):
        return f"the keystore is damaged: {exc} (restore it with `hearth identity import`)"
    if isinstance(exc, IdentityError):  # missing keystore, wrong passphrase, …
        return str(exc)
    if isinstance(exc, ChainUnavailable):
        text = str(exc)
        if text.startswith("cannot reach "):
            return (
                f"cannot reach {chain} ({_network_reason(text)}): is it running, and is "
                "chain.rpc_url right?"
            )
        return text
    if isinstance(exc, ContractReverted):
        args = ", ".join(str(a) for a in exc.args_decoded)
        return _words(exc.name) + (f" ({args})" if args else "")
    if isinstance(exc, TransactionDropped):
        return (
            f"the transaction 0x{exc.tx_hash.hex()} got no receipt in time; it may still be "
            "mined: look at `hearth balance` before trying again"
        )
    if isinstance(exc, OSError):
        module = type(exc).__module__
        if module.startswith(("requests", "urllib3", "aiohttp")):
            return (
                f"cannot reach {chain} ({_network_reason(str(exc))}): is it running, and is "
                "chain.rpc_url right?"
            )
        if exc.filename is not None:
            return f"{exc.filename}: {exc.strerror or exc}"
        return exc.strerror or str(exc) or "an operating-system call failed"
    if isinstance(exc, EOFError):  # end of input at the passphrase prompt
        return "no passphrase given"
    if isinstance(exc, HearthError | ValueError) and str(exc):
        return str(exc)  # the SDK's job failures and refused values say what and why
    return None


@contextmanager
def explained(**context: Any) -> Iterator[None]:
    """Turn any failure inside the block into :func:`fail` with :func:`explain`'s sentence.

    ``typer.Exit``/``Abort`` (a command's own decision) pass through untouched.
    """
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # every failure gets a sentence
        decided = [e for e in _leaves(exc) if isinstance(e, typer.Exit | typer.Abort)]
        if decided:  # trio wraps a command's own exit in an exception group
            raise decided[0] from None
        sentence = explain(exc, **context)
        if sentence is None:
            raise  # a bug: the traceback is what its report needs
        fail(sentence)
