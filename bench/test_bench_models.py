"""`pytest bench/ --benchmark-enable`: whole-model rows of bench/compare.py through
pytest-benchmark (JSON via --benchmark-json). Each row checks its output against eager fp32
before it is timed; rows that cannot run here are skipped with the reason."""

import pytest
import torch

import compare

MODELS = compare.DEFAULT_MODELS
BATCHES = (1, 16)


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("config", list(compare.CONFIGS))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model_name", MODELS)
def test_model_throughput(benchmark, model_name, batch, config):
    try:
        fn, xin, err = compare.prepare(model_name, batch, config)
    except compare.Skip as e:
        if str(e).startswith("WRONG OUTPUT"):
            pytest.fail(f"{config}: {e}")
        pytest.skip(str(e))
    peak = None if config in compare.FOREIGN_RUNTIMES else compare.peak_memory_mb(fn, xin)
    benchmark.extra_info.update(compare.bytes_moved(model_name, batch), rel_err_vs_eager=err, batch=batch,
                                peak_mb=peak)
    with torch.no_grad():
        benchmark.pedantic(fn, args=(xin,), rounds=5, warmup_rounds=compare.WARMUP_CALLS, iterations=1)
