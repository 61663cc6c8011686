"""sqa_nas.convert's methods on small sqa-nas models: converting to the same heads is exact for
every method; each method's layer has the shapes, heads and ranks its formula gives; fit's
W_O is the least-squares solution on the calibration data (checked with torch.linalg.lstsq);
select keeps the heads that contribute most."""

from __future__ import annotations

import pytest
import torch

from sqa_nas.convert import METHODS, convert_model, solve_output, target_config
from sqa_nas.model import ModelConfig, build_model

pytestmark = pytest.mark.usefixtures("seeded")

SHAPE = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=8, ffn_dim=48)  # head_dim 4
D = 4


def model_of(variant: str, *, bias: bool = False, seed: int = 0):
    attention = {"variant": variant, **({"bias": True} if bias else {})}
    model = build_model(ModelConfig(**SHAPE, attention=attention), seed=seed)
    with torch.no_grad():  # larger weights than the init's: attention far from uniform
        for name, p in model.named_parameters():
            if ".attn." in name:
                p.normal_(0, 0.3)
    return model.eval()


def batches(n: int = 3, b: int = 2, length: int = 24) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, SHAPE["vocab_size"], (b, length), generator=g) for _ in range(n)]


def heads(t: torch.Tensor) -> torch.Tensor:
    """(H * D, d) projection rows -> (H, D, d)."""
    return t.view(-1, D, t.shape[-1])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("variant", ["MHA", "GQA", "MQA", "sSQA"])
def test_converting_to_the_same_heads_gives_the_same_logits(variant, method):
    src = model_of(variant, bias=variant == "GQA")
    done = convert_model(src, target_config(src.config, variant), method, batches())
    x = batches(1, 2, 40)[0]
    with torch.no_grad():
        assert torch.equal(done.model(x), src(x))
    assert all(plan.exact for plan in done.plans)
    assert done.errors == [0.0, 0.0]


@pytest.mark.parametrize("method", METHODS)
def test_more_kv_heads_by_copying_and_an_rsqa_source_keep_the_function(method):
    # GQA 8/2 -> 8/8 (KV heads copied); rSQA 2/4 -> 4/4 (its tiled queries written out).
    for variant, target in (("GQA", "8/8"), ("rSQA", "4/4")):
        src = model_of(variant)
        done = convert_model(src, target_config(src.config, target), method, batches())
        x = batches(1, 2, 40)[0]
        with torch.no_grad():
            torch.testing.assert_close(done.model(x), src(x), rtol=1e-5, atol=1e-5)
        assert max(done.errors or [1.0]) < 1e-10


def _layer(model, i: int = 0):
    return model.layers[i].attn


@pytest.mark.parametrize("target", ["4/2", "4/4", "2/2", "8/1"])
@pytest.mark.parametrize("method", METHODS)
def test_each_method_builds_the_layer_its_formula_gives(method, target):
    src = model_of("GQA")  # 8/2: query heads 0-3 read KV head 0, 4-7 KV head 1
    done = convert_model(src, target_config(src.config, target), method, batches(), ridge=0.0)
    n_q, n_kv = map(int, target.split("/"))
    a, b = _layer(src), _layer(done.model)
    assert b.q_proj.weight.shape == (n_q * D, 32)
    assert b.k_proj.weight.shape == b.v_proj.weight.shape == (n_kv * D, 32)
    assert b.o_proj.weight.shape == (32, n_q * D)
    plan = done.plans[0]
    q_src, q_dst = heads(a.q_proj.weight), heads(b.q_proj.weight)
    o_src = a.o_proj.weight.view(32, 8, D)
    o_dst = b.o_proj.weight.view(32, n_q, D)
    group = n_q // n_kv
    for t, sources in enumerate(plan.q):
        # The query head reads a KV head made from the KV head its sources read.
        kv_sources = {h // 4 for h in sources}
        assert kv_sources <= set(plan.kv[t // group])
        torch.testing.assert_close(q_dst[t], q_src[list(sources)].mean(0))
        if method == "mean":
            assert len(sources) == 8 // n_q
            torch.testing.assert_close(o_dst[:, t], o_src[:, list(sources)].sum(1))
        else:
            assert len(sources) == 1
            if method == "select":
                assert torch.equal(o_dst[:, t], o_src[:, sources[0]])
    # KV heads: the mean of the pooled source heads (8/1), copies otherwise.
    k_src, k_dst = heads(a.k_proj.weight), heads(b.k_proj.weight)
    for k, sources in enumerate(plan.kv):
        torch.testing.assert_close(k_dst[k], k_src[list(sources)].mean(0))
    assert torch.linalg.matrix_rank(b.k_proj.weight) == min(n_kv, 2) * D
    if method == "fit":  # refit: full rank, and not the selected columns any more
        assert torch.linalg.matrix_rank(b.o_proj.weight) == n_q * D
    # Everything outside attention is the source's.
    for name, p in src.state_dict().items():
        if ".attn." not in name:
            assert torch.equal(done.model.state_dict()[name], p)


def _record(module, kind: str, into: list):
    """A hook on `module` appending its input (kind "in", before o_proj too) or output."""
    if kind == "in":
        return module.register_forward_pre_hook(lambda m, args: into.append(args[0]))
    return module.register_forward_hook(lambda m, args, out: into.append(out))


def _flat(tensors: list) -> torch.Tensor:
    return torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors]).double()


def _taps(src, dst, data):
    """Per layer i: (Y', Z): the target layer's heads on the source layer's inputs X, and
    the source layer's outputs Z, each (T, ...) in float64."""
    out = {}
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(src.layers, dst.layers)):
            xs, zs, ys = [], [], []
            hooks = [_record(a.attn, "in", xs), _record(a.attn, "out", zs)]
            for x in data:
                src(x)
            hooks.append(_record(b.attn.o_proj, "in", ys))
            for x in xs:
                b.attn(x)
            for hook in hooks:
                hook.remove()
            out[i] = (_flat(ys), _flat(zs))
    return out


@pytest.mark.parametrize("bias", [False, True])
def test_fit_output_projection_is_the_least_squares_solution(bias):
    src, data = model_of("GQA", bias=bias), batches()
    done = convert_model(src, target_config(src.config, "SQA"), "fit", data, ridge=0.0)
    for i, (y, z) in _taps(src, done.model, data).items():
        if bias:
            y = torch.cat([y, torch.ones(len(y), 1, dtype=y.dtype)], 1)
        solution = torch.linalg.lstsq(y, z).solution  # (H_q' D [+1], d)
        o = _layer(done.model, i).o_proj
        torch.testing.assert_close(o.weight.double(), solution[: 4 * D].T, rtol=1e-4, atol=1e-5)
        if bias:
            torch.testing.assert_close(o.bias.double(), solution[-1], rtol=1e-4, atol=1e-5)
    # And it beats select's columns on the same data, layer by layer.
    picked = convert_model(src, target_config(src.config, "SQA"), "select", data)
    assert all(f < s for f, s in zip(done.errors, picked.errors))


def test_solve_output_matches_lstsq_with_and_without_ridge():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(60, 9, generator=g, dtype=torch.float64)
    y[:, -1] = 1.0  # the bias column
    z = torch.randn(60, 5, generator=g, dtype=torch.float64)
    plain = solve_output(y.T @ y, y.T @ z, ridge=0.0, bias=True)
    torch.testing.assert_close(plain, torch.linalg.lstsq(y, z).solution)
    ridge = 0.1
    lam = ridge * float((y.T @ y).diagonal()[:8].mean())
    penalty = torch.diag(torch.tensor([lam**0.5] * 8 + [0.0], dtype=torch.float64))
    augmented = torch.linalg.lstsq(
        torch.cat([y, penalty]), torch.cat([z, torch.zeros(9, 5, dtype=z.dtype)])
    )
    torch.testing.assert_close(
        solve_output(y.T @ y, y.T @ z, ridge=ridge, bias=True), augmented.solution
    )
    # Rank-deficient Y (a repeated column) without ridge: the minimum-norm solution.
    y2 = torch.cat([y[:, :3], y[:, :1]], 1)
    torch.testing.assert_close(
        solve_output(y2.T @ y2, y2.T @ z, ridge=0.0), torch.linalg.pinv(y2) @ z
    )


@pytest.mark.parametrize("method", ["select", "fit"])
def test_select_keeps_the_heads_that_contribute(method):
    src = model_of("GQA")
    with torch.no_grad():  # heads 0, 1 and 5, 6 write nothing: zero W_O columns
        for block in src.layers:
            w = block.attn.o_proj.weight.view(32, 8, D)
            w[:, [0, 1, 5, 6]] = 0.0
    done = convert_model(src, target_config(src.config, "SQA"), method, batches())
    assert all(plan.q == ((2,), (3,), (4,), (7,)) for plan in done.plans)
    if method == "select":  # the dropped heads added nothing: the output is unchanged
        assert max(done.errors) < 1e-10


def test_tied_and_untied_embeddings_are_kept():
    for tie in (True, False):
        cfg = ModelConfig(**SHAPE, tie_embeddings=tie, attention={"variant": "GQA"})
        src = build_model(cfg, seed=0)
        done = convert_model(src, target_config(cfg, "xSQA"), "mean")
        m = done.model
        assert (m.lm_head.weight is m.embed.weight) == tie
        assert torch.equal(m.lm_head.weight, src.lm_head.weight)
