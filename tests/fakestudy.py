"""A synthetic sqa-nas study that follows `sqa_nas.search.records`, for tests of readers
(dashboard, export) that must not wait for a real search."""

from __future__ import annotations

import random

import optuna

from sqa_nas.analytics import analyze
from sqa_nas.model import ModelConfig, layer_dict
from sqa_nas.search.choices import compact_allocation
from sqa_nas.search.records import FORMAT, OBJECTIVES
from sqa_nas.search.storage import open_storage

TINY = dict(vocab_size=256, d_model=64, n_layers=4, n_heads=8, ffn_dim=128)
HEADS = ["8/8", "8/2", "8/1", "4/2", "4/4", "2/2", "2/4"]
MASKS = ["dense", "window:16", "flex:16+4", "block_sparse"]
SEEDS = {"MHA": "8/8", "GQA": "8/2", "SQA": "4/2", "sSQA": "4/4", "xSQA": "2/2"}


def layers_from_params(params: dict) -> list[dict]:
    layers = []
    for i in range(TINY["n_layers"]):
        hq, hkv = map(int, params[f"layer{i}.heads"].split("/"))
        layer = {"n_q_heads": hq, "n_kv_heads": hkv}
        mask = params[f"layer{i}.mask"]
        if mask.startswith("window:"):
            layer["window"] = int(mask.split(":")[1])
        elif mask.startswith("flex:"):
            w, g = mask.split(":")[1].split("+")
            layer.update(window=int(w), global_tokens=int(g))
        elif mask == "block_sparse":
            layer["block_sparse"] = {
                "block_size": 16,
                "local_blocks": 1,
                "global_blocks": 1,
                "random_blocks": 1,
                "seed": 0,
            }
        layers.append(layer)
    return layers


def make_study(
    storage_url: str,
    name: str = "demo",
    n: int = 20,
    seed: int = 0,
    objectives=("val_loss", "throughput_tokens_per_s"),
    failed: int = 2,
    running: int = 1,
    noise: dict | None = None,
    measured: bool = False,
) -> optuna.Study:
    """`n` completed trials (the seed baselines first), `failed` failed and `running` left
    running. `noise`: the study's ``noise`` attr. `measured`: trials carry paired-timing
    intervals (every fifth flagged ``noisy_throughput``, its interval +-7%) and trial 0 is
    the noise trial (three seeds)."""
    rnd = random.Random(seed)
    spread = random.Random(seed + 1)  # apart from `rnd`: the same trials with or without
    # Seeded like `rnd`: the same arguments give the same trials (for a given optuna).
    sampler = (
        optuna.samplers.NSGAIISampler(seed=seed)
        if len(objectives) > 1
        else optuna.samplers.TPESampler(seed=seed)
    )
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(storage_url),
        directions=[OBJECTIVES[o] for o in objectives],
        sampler=sampler,
    )
    study.set_metric_names(list(objectives))
    study.set_user_attr("sqa_nas", {"format": FORMAT, "version": "test"})
    study.set_user_attr("objectives", list(objectives))
    study.set_user_attr("corpus", {"kind": "embedded", "fingerprint": "f" * 16})
    if noise is not None:
        study.set_user_attr("noise", noise)
    dist = optuna.distributions.CategoricalDistribution
    space = {
        f"layer{i}.{k}": dist(c) for i in range(4) for k, c in (("heads", HEADS), ("mask", MASKS))
    }
    seeds = list(SEEDS.items())
    for number in range(n + failed + running):
        if number < len(seeds):
            variant, heads = seeds[number]
            fixed = {f"layer{i}.heads": heads for i in range(4)}
            fixed |= {f"layer{i}.mask": "dense" for i in range(4)}
            study.enqueue_trial(fixed)
        trial = study.ask(space)
        layers = layers_from_params(trial.params)
        config = ModelConfig(**TINY, layers=layers)
        cost = analyze(config, 128)
        resolved = [
            layer_dict(c) | {"pattern": c.pattern, "backend": "sdpa", "backend_reason": "test"}
            for c in config.layer_configs
        ]
        trial.set_user_attr("model", config.resolved())
        trial.set_user_attr("layers", resolved)
        trial.set_user_attr("allocation", compact_allocation(resolved))
        trial.set_user_attr("seed_variant", seeds[number][0] if number < len(seeds) else None)
        trial.set_user_attr(
            "analytics",
            {
                "params": cost.params,
                "flops_per_token": cost.flops,
                "train_flops_per_token": cost.train_flops,
                "attention_flops_per_token": cost.attn_flops,
                "kv_cache_bytes_per_token": cost.kv_bytes,
                "analytic_speedup_vs_mha": cost.speedup_vs_mha,
            },
        )
        trial.set_user_attr(
            "device",
            {
                "name": rnd.choice(["NVIDIA H200", "NVIDIA A100"]),
                "type": "cuda",
                "host": "node-a",
                "node": "node-a",
            },
        )
        trial.set_user_attr("corpus", {"kind": "embedded", "fingerprint": "f" * 16})
        if number >= n + failed:
            continue  # left RUNNING
        if number >= n:
            trial.set_user_attr("fail_reason", "CUDA out of memory")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        throughput = 1e5 * cost.speedup_vs_mha * rnd.uniform(0.9, 1.1)
        val_loss = 2.0 + 0.3 / cost.attn_speedup_vs_mha**-0.5 * rnd.uniform(0.8, 1.2)
        metrics = {
            "val_loss": val_loss,
            "throughput_tokens_per_s": throughput,
            "speedup_vs_mha": cost.speedup_vs_mha,
            "kv_cache_bytes": cost.kv_bytes,
            "params": cost.params,
            "attention_flops": cost.attn_flops,
        }
        extra = {"perplexity": 2.718**val_loss, "accuracy": 0.4}
        if measured:
            half = 0.07 if number % 5 == 4 else spread.uniform(0.005, 0.03)
            extra |= {
                "throughput_rel_ci95": half,
                "speedup_ci95": [
                    cost.speedup_vs_mha * (1 - half),
                    cost.speedup_vs_mha * (1 + half),
                ],
                "throughput_rounds": 12,
                "noisy_throughput": half > 0.05,
            }
            if number == 0:
                losses = [val_loss + d for d in (-0.02, 0.0, 0.02)]
                extra |= {"val_loss_seeds": losses, "val_loss_std": 0.02}
                trial.set_user_attr("seeds", [0, 1, 2])
                trial.set_user_attr("noise_trial", True)
        trial.set_user_attr("metrics", metrics | extra)
        trial.set_user_attr("curve", [[s, s * 1024, 5.0 - s / 10] for s in range(0, 30, 5)])
        study.tell(trial, [metrics[o] for o in objectives])
    return study
