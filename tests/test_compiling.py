"""The model traces whole (no graph breaks) for every variant and pattern once prepared, the
compiled blocks are shared between models, and the per-trial compile decision weighs what
it should. GPU tests train through compiled blocks and through CUDA graphs."""

from __future__ import annotations

import json
import statistics
import warnings
from pathlib import Path

import pytest
import torch

from sqa_nas.compiling import FIRST_COMPILE_S, GAIN, GRAPH_S, decide
from sqa_nas.model import build_model
from sqa_nas.registry import list_variants
from sqa_nas.search.space import load_space
from sqa_nas.train import TrainStep, prefetch

PATTERNS = {
    "dense": {},
    "window": {"window": 8},
    "flex": {"window": 8, "global_tokens": 2},
    "block_sparse": {"block_sparse": {"block_size": 8, "local_blocks": 1, "random_blocks": 1}},
}
TINY = {"vocab_size": 64, "d_model": 64, "n_layers": 2, "n_heads": 8, "ffn_dim": 128}


def _model(variant: str, pattern: dict, causal: bool = True):
    return build_model(
        TINY | {"causal": causal, "attention": {"variant": variant, "backend": "sdpa"} | pattern}
    )


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("variant", [v.name for v in list_variants() if v.pattern == "dense"])
def test_prepared_model_traces_without_graph_breaks(variant, pattern):
    model = _model(variant, PATTERNS[pattern], causal=pattern != "block_sparse")
    model.prepare(32)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's notes on lru_cache wrappers
        tokens = torch.randint(0, 64, (2, 32))
        explained = torch._dynamo.explain(model)(tokens)
        with torch.no_grad():  # evaluation traces too
            explained_eval = torch._dynamo.explain(model)(tokens)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained_eval.graph_break_count == 0, explained_eval.break_reasons
    assert explained.graph_count == 1
    traced = torch.compile(model, backend="eager", fullgraph=True)  # dynamo's graph, run eagerly
    torch.testing.assert_close(traced(tokens), model(tokens), rtol=0, atol=0)


def test_an_unprepared_model_breaks_where_it_chooses_its_backend():
    """The test above can fail: without `prepare` the trace meets the backend choice."""
    model = _model("xSQA", {})
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explained = torch._dynamo.explain(model)(torch.randint(0, 64, (2, 32)))
    assert explained.graph_break_count > 0


def test_prepare_reports_the_training_backend_and_sizes_rope():
    model = _model("SQA", {})
    chosen = model.prepare(40)
    assert chosen == model.backends() and all(name == "sdpa" for name, _ in chosen)
    attn = model.layers[0].attn
    assert attn.rope_cos.shape[0] >= 40 and attn.rope_cos.dtype == torch.float64
    assert "rope_cos" not in model.state_dict().keys()  # checkpoints stay as they were


def test_compiled_blocks_are_shared_between_models_of_one_layout():
    """Two models with the same block layouts reuse the graphs (dynamo traces twice, once per
    layout), so a search pays compile cost once per block shape."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    layers = [{"variant": "xSQA"}, {"variant": "MHA"}, {"variant": "xSQA"}]
    for _ in range(2):
        model = build_model(TINY | {"n_layers": 3, "layers": layers})
        model.prepare(16)
        blocks = [torch.compile(b, backend="eager", fullgraph=True) for b in model.layers]
        model(torch.randint(0, 64, (2, 16)), blocks).sum().backward()
    assert counters["stats"]["unique_graphs"] == 2


def test_decide_weighs_the_studys_graphs_against_its_saving():
    gpu = torch.device("cuda", 0)
    cost = FIRST_COMPILE_S + 3 * GRAPH_S
    per_step = 0.05 * (1 - 1 / GAIN)  # seconds an eager step of 0.05 s saves compiled
    short = decide("auto", gpu, graphs=4, steps=int(cost / per_step) - 10, eager_step_s=0.05)
    assert not short.used and short.est_cost_s == cost and short.est_saving_s < cost
    assert f"~{cost:.0f} s >=" in short.reason and "H200" in short.reason
    long = decide("auto", gpu, graphs=4, steps=int(cost / per_step) + 10, eager_step_s=0.05)
    assert long.used and long.est_saving_s > cost
    assert not decide("auto", gpu, 4, -1, 0.05).used  # time-bounded: nothing to weigh
    assert not decide(True, torch.device("cpu"), 4, 10, None).used  # never on CPU
    assert decide(True, gpu, 4, 10, None).used and not decide(False, gpu, 4, 10, 1).used


def test_prefetch_yields_every_batch_in_order_and_passes_errors_on():
    assert list(prefetch(iter(range(10)), depth=2)) == list(range(10))

    def broken():
        yield 1
        raise ValueError("corpus gone")

    stream = prefetch(broken())
    assert next(stream) == 1
    with pytest.raises(ValueError, match="corpus gone"):
        next(stream)


def test_train_step_loss_is_the_models_cross_entropy():
    model = _model("GQA", {})
    step = TrainStep(model, torch.device("cpu"), 16)
    x = torch.randint(0, 64, (2, 16))
    expected = torch.nn.functional.cross_entropy(model(x).view(-1, 64), x.view(-1))
    torch.testing.assert_close(step.loss(x, x), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_training_learns_on_gpu(mode):
    """Compiled blocks (and CUDA graphs with mode="reduce-overhead") train: the loss of a
    repeated batch falls, and the compiled loss matches the eager one."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_model(TINY | {"n_heads": 4, "attention": {"variant": "SQA"}}).to(device)
    x = torch.randint(0, 64, (8, 64), device=device)
    eager = TrainStep(model, device, 64).loss(x, x).item()
    step = TrainStep(model, device, 64, compiled=True, mode=mode)
    assert step.loss(x, x).item() == pytest.approx(eager, rel=2e-2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = step.loss(x, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_whole_model_trains_with_cuda_graphs():
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_model(TINY | {"n_heads": 4, "attention": {"variant": "xSQA"}}).to(device)
    model.prepare(64, torch.bfloat16)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 64, (8, 64), device=device)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = compiled(x)
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, 64), x.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_auto_trains_the_measured_10m_search_eagerly_and_compiles_at_50m():
    """The README's claim, from the committed H200 run: with that run's eager step, `decide`
    keeps paper_dense eager at 10M tokens per trial and compiles it at 50M."""
    root = Path(__file__).resolve().parents[1]
    result = json.loads((root / "experiments/results/search_efficiency_h200.json").read_text())
    eager = next(r for r in result["runs"] if r["label"] == "eager")
    spec = load_space(root / "search_spaces/paper_dense.yaml")
    tokens_per_step = spec.budget.train.batch_size * spec.model.seq_len
    step_s = tokens_per_step / statistics.median(t["train_tokens_per_s"] for t in eager["trials"])
    graphs = spec.layouts()  # training and throughput share one batch shape there
    gpu = torch.device("cuda", 0)
    for tokens, compiles in ((10_000_000, False), (50_000_000, True)):
        steps = 16 * -(-tokens // tokens_per_step)
        assert decide("auto", gpu, graphs, steps, step_s).used is compiles, tokens
