"""``hearth bench net``: the gossip and stream benchmark, and the processes it runs.

* :mod:`~p2pnode.bench_net.run` — the two phases (stock py-libp2p, then ours) and the table;
* :mod:`~p2pnode.bench_net.peer` — the hardened node process, driven by JSON lines;
* :mod:`~p2pnode.bench_net.rawpeer` — the stock py-libp2p baseline process;
* :mod:`~p2pnode.bench_net.procs` — spawning and driving those processes by PID.

A harness on top of the transport (:mod:`p2pnode.net`), never imported by the node.
"""

from p2pnode.bench_net.run import print_table, run_bench

__all__ = ["print_table", "run_bench"]
