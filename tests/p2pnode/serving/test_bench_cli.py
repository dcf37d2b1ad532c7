"""`hearth bench serving`: the JSON it prints, and bad flags."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from p2pnode.cli.app import app
from p2pnode.serving.bench import make_workload

runner = CliRunner()


def test_bench_serving_json_has_every_figure() -> None:
    result = runner.invoke(
        app,
        ["bench", "serving", "--requests", "1", "--no-baselines", "--repeat", "3", "--json"],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["workload"] == "mixed1" and doc["decode_attention"] == "kernel"
    assert doc["output_tokens"] == make_workload(1).output_tokens
    runs = doc["tokens_per_s_runs"]
    assert len(runs) == 3 and doc["tokens_per_s"] == sorted(runs)[1] > 0
    for key in ("ttft_ms", "itl_ms"):
        assert 0 < doc[key]["p50"] <= doc[key]["p95"]
    assert doc["peak_rss_mb"] > 0 and doc["baseline_sequential_tokens_per_s"] is None


def test_bench_serving_without_the_kernel_says_so() -> None:
    result = runner.invoke(
        app,
        [
            "bench",
            "serving",
            "--requests",
            "1",
            "--no-baselines",
            "--no-attention-kernel",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["decode_attention"] == "torch"


def test_bench_serving_refuses_a_bad_dtype() -> None:
    result = runner.invoke(app, ["bench", "serving", "--dtype", "float16"])
    assert result.exit_code == 2
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())  # rich's box, unwrapped
    assert "'float16' is not one of 'float32', 'bfloat16'" in said
    # the enum is the engine's own list, not a copy that can drift
    from p2pnode.cli.serving import Dtype
    from p2pnode.serving.bench import DTYPES

    assert tuple(d.value for d in Dtype) == DTYPES
