"""Write tests/data/golden_plans.json: OMPQ plans of the bundled MNIST-1D model over the paper's and
the library's settings, so that later changes of the pipeline can be checked against them.

    python tests/data/make_golden_plans.py

The committed file was written at commit cb144fb, before plan() became a pipeline of stages.
"""

import json
import sys
from pathlib import Path

from torch import nn

from ompq_ext import plan
from ompq_ext.demo import load_demo

CASES = {
    "default 3 bits": ("3bits", {}),
    "default 2.5 bits": ("2.5bits", {}),
    "default 4 bits": ("4bits", {}),
    "paper: suffix mean, beta 10, bits 2-8, block outputs, batch BN": (
        "3bits", {"objective": "suffix_mean", "beta": 10.0, "bits": list(range(2, 9)),
                  "feature_point": "activation", "bn_mode": "batch"}),
    "unbiased, 16 samples": ("3bits", {"estimator": "unbiased", "num_samples": 16}),
    "size and BOPs, A6": (["3.5bits", "0.025GBOPs"], {"act_bits": 6}),
    "fixed stem and fc, tied shortcut": ("3bits", {"fixed_bits": {"stem.0": 8, "fc": 8},
                                                   "ties": [["layers.1.0.conv2", "layers.1.0.downsample.0"]]}),
    "latency": ("4bits", {"bits": [2, 4, 8], "latency": 25.0}),
}


def latency_table(model):
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    return {n: {b: 0.1 * (i % 5 + 1) * b + 0.01 for b in range(1, 17)} for i, n in enumerate(names)}


def main(out=Path(__file__).with_name("golden_plans.json")):
    model, calib, _, _ = load_demo()
    golden = {}
    for name, (budget, options) in CASES.items():
        options = dict(options)
        if "latency" in options:
            options.update(latency_table=latency_table(model), latency_budget=options.pop("latency"))
        p = plan(model, [calib], budget, method="ompq", progress=False, **options)
        golden[name] = {"bits": p.bits, "gamma": {x.name: x.gamma for x in p.layers},
                        "size_bits": p.totals["size_bits"], "bops": p.totals["bops"], "objective": p.solver["objective"]}
    out.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"{len(golden)} plans written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
