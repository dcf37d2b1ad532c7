"""The serving meter (what a node advertises as its speed) and the engine that feeds it."""

from __future__ import annotations

import pytest
import trio

from p2pnode.serving import Engine, GenerationRequest, LoadedModel
from p2pnode.serving.meter import ServingMeter


def test_nothing_measured_reads_none() -> None:
    m = ServingMeter()
    assert m.tokens_per_s(1) is None
    assert m.ttft_ms() is None
    assert m.reading().steps == 0


@pytest.mark.parametrize(
    ("steps", "batch", "expected_step_s"),
    [
        ({1: 0.010}, 1, 0.010),  # measured: its mean
        ({1: 0.010, 4: 0.016}, 2, 0.012),  # between two sizes: the straight line
        ({1: 0.010, 4: 0.016}, 3, 0.014),
        ({4: 0.016}, 2, 0.016),  # below anything measured: no faster than the smallest
        ({2: 0.010}, 4, 0.020),  # one size known: batching assumed to gain nothing
        ({1: 0.010, 2: 0.012}, 4, 0.016),  # above: the line through the two largest
        ({1: 0.010, 2: 0.008}, 4, 0.008),  # ... never falling with the batch
    ],
)
def test_step_time_by_batch(steps: dict[int, float], batch: int, expected_step_s: float) -> None:
    m = ServingMeter()
    for b, t in steps.items():
        m.note_step(batch=b, seconds=t)
    assert m.step_s(batch) == pytest.approx(expected_step_s)
    assert m.tokens_per_s(batch) == pytest.approx(1.0 / expected_step_s)


def test_step_mean_is_plain_at_first_then_exponential() -> None:
    m = ServingMeter(alpha=0.25)
    m.note_step(batch=1, seconds=0.1)  # an outlier first: it must not linger
    for _ in range(3):
        m.note_step(batch=1, seconds=0.01)
    assert m.step_s(1) == pytest.approx((0.1 + 3 * 0.01) / 4)  # the first 4: a plain mean
    m.note_step(batch=1, seconds=0.02)  # then the newest weighs alpha
    assert m.step_s(1) == pytest.approx(0.0325 + 0.25 * (0.02 - 0.0325))


def test_ttft_is_the_median_of_a_window() -> None:
    m = ServingMeter(ttft_window=3)
    for s in (5.0, 0.1, 0.2, 0.3):  # the 5 s one has left the window
        m.note_ttft(s)
    assert m.ttft_ms() == pytest.approx(200.0)
    m.reset_ttft()
    assert m.ttft_ms() is None


def test_bad_inputs_are_refused_or_ignored() -> None:
    with pytest.raises(ValueError, match="alpha"):
        ServingMeter(alpha=0.0)
    with pytest.raises(ValueError, match="ttft_window"):
        ServingMeter(ttft_window=0)
    m = ServingMeter()
    m.note_step(batch=0, seconds=0.01)
    m.note_step(batch=1, seconds=0.0)
    m.note_ttft(-1.0)
    assert m.reading().steps == 0 and m.ttft_ms() is None
    with pytest.raises(ValueError, match="batch"):
        m.step_s(0)


async def test_warm_up_measures_and_live_requests_move_the_figures(smollm: LoadedModel) -> None:
    async with Engine(smollm, max_batch=4, max_model_len=256) as engine:
        assert engine.speed().tokens_per_s is None  # before the warm-up: nothing to state
        first = await engine.warm_up(batch=3, tokens=6)
        reading = engine.meter.reading()
        assert {1, 3} <= reading.step_ms.keys()  # alone, and the full burst
        assert first.batch == 1
        assert first.tokens_per_s is not None and first.tokens_per_s > 0
        assert first.ttft_ms is not None and first.ttft_ms > 0
        assert reading.ttft_samples == 1  # the burst's times to first token were dropped
        steps = reading.steps

        req = GenerationRequest(prompt="Say hello", max_tokens=5, temperature=0.0, ignore_eos=True)
        await engine.complete(req)
        after = engine.meter.reading()
        assert after.steps == steps + 4  # one prefill (not counted), four decode steps
        assert after.ttft_samples == 2

        # while a request runs, a new one would join a batch of two
        async with trio.open_nursery() as nursery:
            long = GenerationRequest(
                prompt="Count:", max_tokens=40, temperature=0.0, ignore_eos=True
            )
            nursery.start_soon(engine.complete, long)
            with trio.fail_after(60):
                while engine.in_flight == 0:
                    await trio.sleep(0.001)
            busy = engine.speed()
            assert busy.batch == 2
            assert busy.tokens_per_s is not None
            assert busy.tokens_per_s == pytest.approx(engine.meter.tokens_per_s(2))
