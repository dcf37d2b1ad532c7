"""Tokenizer, chat template and incremental detokenisation.

:class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` (from ``tokenizer.json`` or built
from GGUF metadata) together with the model's chat template, rendered with jinja2 in
a sandbox the way Hugging Face renders it.

:class:`IncrementalDetokenizer` turns a growing list of token ids into text deltas.
A token may end in the middle of a UTF-8 character (byte-level BPE), so each step
decodes a small window of recent tokens and only emits text once it no longer ends in
the replacement character ``"\\ufffd"`` (the method used by vLLM and TGI).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

__all__ = ["IncrementalDetokenizer", "Tokenizer"]


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


class Tokenizer:
    """Encode, decode and apply the chat template of one model."""

    def __init__(
        self,
        inner: HFTokenizer,
        *,
        chat_template: str | None,
        bos_token_id: int | None,
        eos_token_ids: Sequence[int],
        add_bos: bool = False,
    ) -> None:
        self.inner = inner
        self.chat_template = chat_template
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)
        self.add_bos = add_bos
        self._template: jinja2.Template | None = None
        if chat_template:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            self._template = env.from_string(chat_template)

    @property
    def vocab_size(self) -> int:
        return int(self.inner.get_vocab_size(with_added_tokens=True))

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry of one id ("" for an unknown id)."""
        return self.inner.id_to_token(token_id) or ""

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in the text become single ids."""
        ids = list(self.inner.encode(text, add_special_tokens=False).ids)
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self.inner.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """Render ``messages`` (``[{"role": ..., "content": ...}]``) to prompt text."""
        if self._template is None:
            raise ValueError("this model has no chat template; send a raw prompt")
        bos = self.token_text(self.bos_token_id) if self.bos_token_id is not None else ""
        eos = self.token_text(self.eos_token_ids[0]) if self.eos_token_ids else ""
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
        )

    def save(self, directory: Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (Hugging Face layout)."""
        self.inner.save(str(directory / "tokenizer.json"))
        cfg: dict[str, Any] = {
            "chat_template": self.chat_template,
            "bos_token": self.token_text(self.bos_token_id)
            if self.bos_token_id is not None
            else None,
            "eos_token": self.token_text(self.eos_token_ids[0]) if self.eos_token_ids else None,
            "add_bos_token": self.add_bos,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))

    @classmethod
    def from_hf_dir(
        cls, directory: Path, *, bos_token_id: int | None, eos_token_ids: Sequence[int]
    ) -> Tokenizer:
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json`` for the chat template)."""
        inner = HFTokenizer.from_file(str(directory / "tokenizer.json"))
        template: str | None = None
        add_bos = False
        tc_path = directory / "tokenizer_config.json"
        if tc_path.exists():
            tc = json.loads(tc_path.read_text())
            raw = tc.get("chat_template")
            if isinstance(raw, list):  # named templates: take "default"
                raw = next((t["template"] for t in raw if t.get("name") == "default"), None)
            template = raw
            add_bos = bool(tc.get("add_bos_token", False))
        jinja_path = directory / "chat_template.jinja"
        if template is None and jinja_path.exists():
            template = jinja_path.read_text()
        return cls(
            inner,
            chat_template=template,
            bos_token_id=bos_token_id,
            eos_token_ids=eos_token_ids,
            add_bos=add_bos,
        )

    @classmethod
    def from_gguf_fields(cls, fields: dict[str, Any]) -> Tokenizer:
        """Build a byte-level BPE tokenizer from ``tokenizer.ggml.*`` metadata."""
        kind = fields.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (only 'gpt2' BPE)")
        tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
        types: list[int] = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
        merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
        vocab = {t: i for i, t in enumerate(tokens)}
        inner = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        pre = fields.get("tokenizer.ggml.pre", "default")
        if pre in ("smollm", "starcoder", "refact"):  # digits split one by one
            inner.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        elif pre in ("llama3", "llama-bpe", "llama-v3"):
            pattern = (
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            )
            inner.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        else:
            inner.pre_tokenizer = byte_level
        inner.decoder = decoders.ByteLevel()
        control = [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == 3
        ]
        inner.add_special_tokens(control)
        eos = fields.get("tokenizer.ggml.eos_token_id")
        bos = fields.get("tokenizer.ggml.bos_token_id")
        return cls(
            inner,
            chat_template=fields.get("tokenizer.chat_template"),
            bos_token_id=int(bos) if bos is not None else None,
            eos_token_ids=[int(eos)] if eos is not None else [],
            add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        )


class IncrementalDetokenizer:
    """Text deltas for a growing token list, correct across multi-byte characters.

    ``prefix_ids`` (the prompt tail, or a resumed prefix) gives the decoder context so
    that the first generated token decodes as it would inside the full text.
    """

    def __init__(self, tokenizer: Tokenizer, prefix_ids: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        self._ids: list[int] = list(prefix_ids[-6:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly "")."""
        self._ids.append(token_id)
        prefix = self._tok.decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._tok.decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return delta
        return ""
