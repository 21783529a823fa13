"""A quantized model's forward against the float model's, on the ViT-B/16 shape (random init).

ViT-B/16 is the case where every attention weight is used outside its module's call
(``nn.MultiheadAttention``): its inputs are quantized by the op-level mode of ``quant/op_inputs.py``
(plus one identity product per attention for the out-projection's input). Three sides in one
pytest-benchmark group: the float forward, the quantized model with weights only (act_bits=0), and
weights and 8-bit inputs. N = 8 images of 224 px, no grad.

    pytest bench/bench_quantized.py --benchmark-only --benchmark-group-by=group
"""

import pytest
import torch

import ompq_ext
from ompq_ext.models import vit_b_16


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = vit_b_16().eval()
    x = torch.randn(8, 3, 224, 224)
    plan = ompq_ext.plan(model, [x], "4bits", method="ompq", progress=False)
    quantized = {
        "weights": ompq_ext.quantize(model, plan, act_bits=0, progress=False),
        "weights+inputs": ompq_ext.quantize(model, plan, [x], num_calib=8, progress=False),
    }
    return model, quantized, x


@pytest.mark.benchmark(group="vit_b_16-224px-N8")
@pytest.mark.parametrize("side", ["float", "weights", "weights+inputs"])
def test_forward(benchmark, vit, side):
    model, quantized, x = vit
    run = model if side == "float" else quantized[side]

    def forward():
        with torch.no_grad():
            return run(x)

    out = benchmark.pedantic(forward, rounds=5, warmup_rounds=1)
    with torch.no_grad():
        error = float((out - model(x)).norm() / model(x).norm())
    benchmark.extra_info["relative_error_vs_float"] = round(error, 4)
