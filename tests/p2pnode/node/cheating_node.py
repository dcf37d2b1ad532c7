"""A cheating homeowner node, built for the tests (never a flag of the product).

It runs the real ``hearth node`` with one change: the weights it serves are an int8
round-trip of the model's (per output row, symmetric), a cheaper substitute, while its
offers still state the original model's content address. Usage::

    python cheating_node.py /path/to/hearth.toml
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any


def int8_substitute(path: Any = None) -> Any:
    from p2pnode.serving.loader import load_model  # the real loader

    loaded = load_model(path)
    state = dict(loaded.state_dict)
    for name, w in state.items():
        if w.dim() == 2 and w.is_floating_point():
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
            state[name] = ((w / scale).round().clamp(-128, 127) * scale).to(w.dtype).contiguous()
    return dataclasses.replace(loaded, state_dict=state)


if __name__ == "__main__":
    import p2pnode.serving as serving
    from p2pnode.cli.app import main

    serving.load_model = int8_substitute  # run_node imports it from the package
    sys.argv = ["hearth", "node", "--config", sys.argv[1]]
    main()
