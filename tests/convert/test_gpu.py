"""The GPU paths of convert, finetune and the experiment (the lead runs these on the H200):
calibration and the least-squares statistics on the device, a compiled fine-tune, and the
experiment's smoke run with compiled blocks."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import convert_gqa
from sqa_nas.cli import main
from sqa_nas.convert import METHODS, load_export
from tests.convert.test_llama import SMALL, convert, save_hf

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("method", METHODS)
def test_convert_on_the_gpu_gives_the_hf_logits(tmp_path, method):
    hf_model = save_hf(tmp_path / "llama")
    out = tmp_path / "out"
    assert convert(tmp_path / "llama", "GQA", method, out, "--device", "cuda") == 0
    x = torch.randint(0, SMALL["vocab_size"], (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(load_export(out)(x), hf_model(x).logits, rtol=1e-4, atol=1e-4)


def test_a_compiled_finetune_on_the_gpu(tmp_path):
    save_hf(tmp_path / "llama")
    out, ft = tmp_path / "sqa", tmp_path / "ft"
    assert convert(tmp_path / "llama", "SQA", "fit", out, "--device", "cuda") == 0
    argv = "--tokens 4096 --seq-len 64 --batch-size 8 --eval-batches 2 --compile".split()
    assert main(["finetune", str(out), *argv, "--device", "cuda", "--out", str(ft)]) == 0
    log = json.loads((ft / "finetune.json").read_text())
    assert log["device"].startswith("cuda") and log["steps"] == 8
    assert log["val_after"]["val_loss"] < log["val_before"]["val_loss"]


def test_the_experiment_smoke_run_compiles_on_the_gpu(tmp_path):
    out = tmp_path / "s.json"
    convert_gqa.main(["--smoke", "--variants", "SQA", "--methods", "fit", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["budget"]["compile"] and data["machine"]["device_type"] == "cuda"
    assert all(r["val_loss"] > 0 for r in data["runs"])
