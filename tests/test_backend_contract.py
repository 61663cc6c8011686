"""Every built-in backend passes `BackendContract`; GPU-only ones are skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from sqa_nas.attention import MaskSpec, dense_mask
from sqa_nas.kernels.flash_attn import FlashAttnBackend
from sqa_nas.kernels.flex import FlexBackend
from sqa_nas.kernels.sdpa import SdpaBackend
from sqa_nas.kernels.xformers import XformersBackend, attn_bias_for
from sqa_nas.testing import BackendContract


class TestSdpaContract(BackendContract):
    backend = SdpaBackend()


class TestFlexContractEager(BackendContract):
    backend = FlexBackend(compile=False)


@pytest.mark.gpu
class TestSdpaContractCuda(BackendContract):
    backend = SdpaBackend()
    device = "cuda"
    dtype = torch.bfloat16


@pytest.mark.gpu
class TestFlexContractCuda(BackendContract):
    backend = FlexBackend()
    device = "cuda"
    dtype = torch.bfloat16


@pytest.mark.gpu
class TestFlashAttnContract(BackendContract):
    backend = FlashAttnBackend()
    device = "cuda"
    dtype = torch.bfloat16


@pytest.mark.gpu
class TestXformersContract(BackendContract):
    backend = XformersBackend()
    device = "cuda"
    dtype = torch.bfloat16


@pytest.mark.parametrize("spec", [MaskSpec(True), MaskSpec(True, window=5),
                                  MaskSpec(False, window=3), MaskSpec(False)])
def test_xformers_biases_equal_our_masks(spec):
    """The bias classes are plain Python: materialise them on CPU and compare."""
    pytest.importorskip("xformers.ops")
    n = 23
    bias = attn_bias_for(spec)
    ours = dense_mask(spec, n)
    if bias is None:
        assert ours is None
        return
    theirs = bias.materialize((n, n), dtype=torch.float32) == 0  # 0 = visible, -inf = masked
    assert torch.equal(theirs, ours)


def test_xformers_refuses_global_tokens():
    pytest.importorskip("xformers.ops")
    with pytest.raises(ValueError, match="no bias for flex"):
        attn_bias_for(MaskSpec(True, window=4, global_tokens=2))
