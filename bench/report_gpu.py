"""Print docs/BENCHMARKS.md's GPU figures (issue 5), both sides in one process on one device:

* the Gram K += X Xᵀ on the GPU: the core's CUDA kernels (CUDA cores; tensor cores for 16-bit features) and
  the cuBLAS path (torch.bmm over column chunks, float64 across them), marked "(auto)" where the default
  picks it, vs torch.matmul(x, x.T);
* the ORM matrix formed on the GPU vs the CPU core after copying the Grams (what plan() did before);
* fake-quant forward alone vs torch's fixed-scale op, with our bandwidth and its share of the device's peak;
* fake-quant forward+backward vs torch's CUDA ops: with a fixed scale (straight-through gradient only)
  against torch.fake_quantize_per_{channel,tensor}_affine, and with a learnable scale (LSQ) against
  torch._fake_quantize_learnable_per_{channel,tensor}_affine;
* plan() end to end on a ResNet-50 that lives on the GPU, N = 64 at 224 px (target: under 1 s),
  against one plain forward of the same batch;
* the same on torchvision's architectures (random init; ../shared/gpu/tv_plan_gpu.py's probe).

    python bench/report_gpu.py [--repeats 20]

Times are medians of CUDA-event-timed repeats after a warm-up; ratio = theirs / ours.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

import ompq_ext
from ompq_ext import _core, cuda_kernels
from ompq_ext.models import resnet50
from ompq_ext.quant.ops import fake_quantize, quant_range

from common import interleaved_medians, load_torchvision

GRAM_SHAPES = [(32, 200_704), (64, 200_704), (64, 25_088), (128, 802_816)]
ORM_SHAPES = [(54, 64), (160, 256)]  # ResNet-50's planned layers at N = 64; a deep network at N = 256
FQ_CASES = [("conv weight 512x512x3x3, per channel, 4-bit", (512, 512, 3, 3), 0, 4, True),
            ("linear weight 4096x4096, per channel, 8-bit", (4096, 4096), 0, 8, True),
            ("activation 64x64x56x56, per tensor, 8-bit", (64, 64, 56, 56), None, 8, False)]


def cuda_time(fn, repeats):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def gram_rows(repeats):
    rows = []
    for n, d in GRAM_SHAPES:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.randn(n, d, device="cuda").to(dtype)
            k = torch.zeros(n, n, dtype=torch.float64, device="cuda")
            ref = x.double() @ x.double().T
            theirs = cuda_time(lambda: torch.matmul(x, x.T), repeats)
            kernels = ["cuda_cores"] + ([] if dtype == torch.float32 else ["tensor_cores"])
            if dtype == torch.float32 or cuda_kernels._blas_takes_16bit(x.device):
                kernels.append("blas")
            auto = "blas" if cuda_kernels._use_blas(x) else kernels[-1]
            for kernel in kernels:
                ours = cuda_time(lambda: cuda_kernels.gram_accumulate(x, k, kernel), repeats)
                k.zero_()
                cuda_kernels.gram_accumulate(x, k, kernel)
                err = ((k - ref).abs().max() / ref.abs().max()).item()
                label = ("cuBLAS, float64 across chunks" if kernel == "blas" else kernel.replace("_", " ")) + (
                    " (auto)" if kernel == auto else "")
                rows.append(f"| {n} × {d:,} | {str(dtype).split('.')[-1]} | {label} | "
                            f"{ours * 1e3:.3f} | {theirs * 1e3:.3f} | **{theirs / ours:.2f}** | {err:.1e} |")
    return rows


def orm_rows(repeats):
    rows = []
    for layers, n in ORM_SHAPES:
        feats = torch.randn(layers, n, 512, device="cuda", dtype=torch.float64)
        grams = feats @ feats.transpose(1, 2)

        def on_cpu():
            return _core.orm_matrix(grams.cpu().numpy(), "biased")

        on_gpu = cuda_time(lambda: cuda_kernels.orm_matrix(grams, "biased"), repeats)
        cpu = interleaved_medians({"cpu": on_cpu}, max(3, repeats // 4))["cpu"]
        err = np.max(np.abs(cuda_kernels.orm_matrix(grams, "biased") - on_cpu()))
        rows.append(f"| {layers} layers × N = {n} | {on_gpu * 1e3:.3f} | {cpu * 1e3:.3f} | **{cpu / on_gpu:.2f}** | "
                    f"{err:.1e} |")
    return rows


def fake_quant_rows(repeats):
    rows = []
    for label, shape, axis, bits, signed in FQ_CASES:
        qmin, qmax = quant_range(bits, signed)
        x = (torch.randn(shape, device="cuda") * 2).requires_grad_()
        channels = 1 if axis is None else shape[axis]
        grad = torch.randn(shape, device="cuda")
        for learnable in (False, True):
            scale = (torch.rand(channels, device="cuda") * 0.1 + 0.01).requires_grad_(learnable)
            zero = torch.zeros(channels, device="cuda")
            scale_value = scale[0].item()  # torch's per-tensor op takes a Python float: read once, outside the timing

            wrt = [x, scale] if learnable else [x]  # the gradients each side computes (none accumulated)

            def ours():
                torch.autograd.grad(fake_quantize(x, scale, bits=bits, signed=signed, axis=axis), wrt, grad)

            def theirs():
                if learnable and axis is None:
                    y = torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero, qmin, qmax, 1.0)
                elif learnable:
                    y = torch._fake_quantize_learnable_per_channel_affine(x, scale, zero, axis, qmin, qmax, 1.0)
                elif axis is None:
                    y = torch.fake_quantize_per_tensor_affine(x, scale_value, 0, qmin, qmax)
                else:
                    y = torch.fake_quantize_per_channel_affine(x, scale, zero.int(), axis, qmin, qmax)
                torch.autograd.grad(y, wrt, grad)

            a, b = cuda_time(ours, repeats), cuda_time(theirs, repeats)
            with torch.no_grad():
                mine = fake_quantize(x, scale, bits=bits, signed=signed, axis=axis)
                ref = (torch.fake_quantize_per_tensor_affine(x, scale_value, 0, qmin, qmax) if axis is None
                       else torch.fake_quantize_per_channel_affine(x, scale, zero.int(), axis, qmin, qmax))
            torch_op = ("learnable (LSQ) op" if learnable else "fake_quantize_per_" + ("tensor" if axis is None
                                                                                         else "channel") + "_affine")
            rows.append(f"| {label} | {'scale learnable' if learnable else 'fixed scale'} | {torch_op} | "
                        f"{a * 1e3:.3f} | {b * 1e3:.3f} | **{b / a:.2f}** | {torch.equal(mine, ref)} |")
    return rows


PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12}  # bytes/s, by a substring of the device name (SXM figures)


def fake_quant_forward_rows(repeats):
    """The forward alone (no autograd): ours vs torch's fixed-scale op, as bandwidth: 8 bytes per element (read x,
    write y) over the time, and that as a fraction of the device's peak."""
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BANDWIDTH.items() if k in name), None)
    rows = []
    for label, shape, axis, bits, signed in FQ_CASES:
        qmin, qmax = quant_range(bits, signed)
        x = torch.randn(shape, device="cuda") * 2
        channels = 1 if axis is None else shape[axis]
        scale = torch.rand(channels, device="cuda") * 0.1 + 0.01
        zero = torch.zeros(channels, device="cuda", dtype=torch.int32)
        scale_value = scale[0].item()
        with torch.no_grad():
            ours = cuda_time(lambda: fake_quantize(x, scale, bits=bits, signed=signed, axis=axis), repeats)
            theirs = cuda_time(lambda: torch.fake_quantize_per_tensor_affine(x, scale_value, 0, qmin, qmax) if axis is None
                               else torch.fake_quantize_per_channel_affine(x, scale, zero, axis, qmin, qmax), repeats)
        rate = 8 * x.numel() / ours
        share = f"{rate / peak:.0%}" if peak else "n/a"
        rows.append(f"| {label} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | **{theirs / ours:.2f}** | {rate / 1e12:.2f} TB/s "
                    f"| {share} |")
    return rows


def plan_rows(repeats):
    torch.manual_seed(0)
    model = resnet50().cuda().eval()
    x = torch.randn(64, 3, 224, 224, device="cuda")

    def forward():
        with torch.no_grad():
            model(x)
        torch.cuda.synchronize()

    stages = []

    def plan():
        stages.append(ompq_ext.plan(model, [x], "16MiB", num_samples=64, method="ompq", progress=False).timing)

    times = interleaved_medians({"forward": forward, "plan": plan}, max(3, repeats // 4))
    stages = stages[1:]  # without the warm-up call
    stage = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    f, q = times["forward"], times["plan"]
    return [f"| plain no-grad forward | {f * 1e3:.0f} ms |", f"| plan() end to end | **{q * 1e3:.0f} ms** (target < 1000) |",
            f"| ratio plan / forward | {q / f:.2f} |",
            "| plan() stages | " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in stage.items()) + " |"]


TV_ARCHS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit_b_16", "swin_t",
            "regnet_y_400mf"]


def torchvision_rows(repeats, device="cuda", archs=TV_ARCHS):
    """plan() (OMPQ) vs one no-grad forward on torchvision architectures on the GPU: random init, N = 64, 224 px,
    float32, budget 4 bits per weight (../shared/gpu/tv_plan_gpu.py's measurement)."""
    torchvision = load_torchvision()
    if torchvision is None:
        return ["| torchvision is not installed | | | | | | |"]
    x = torch.randn(64, 3, 224, 224, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for arch in archs:
        try:
            torch.manual_seed(0)
            model = getattr(torchvision.models, arch)(weights=None).eval().to(device)

            def forward():
                with torch.no_grad():
                    model(x)
                sync()

            plans = []

            def plan():
                plans.append(ompq_ext.plan(model, [x], "4bits", num_samples=64, method="ompq", progress=False))
                sync()

            times = interleaved_medians({"forward": forward, "plan": plan}, max(3, repeats // 4))
            p = plans[-1]
            f, q = times["forward"], times["plan"]
            stages = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in p.timing.items() if k != "total")
            rows.append(f"| {arch} | {len(p.layers)} | {f * 1e3:.1f} | {q * 1e3:.1f} | **{q / f:.2f}** | "
                        f"{p.totals['avg_bits']:.3f} | {stages} |")
        except Exception as e:  # noqa: BLE001 - one architecture's failure is a row of the table
            rows.append(f"| {arch} | error: {type(e).__name__}: {str(e)[:160]} | | | | | |")
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible")
    print(f"Command: `python bench/report_gpu.py --repeats {args.repeats}`  ")
    print(f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}, CUDA {torch.version.cuda}\n")
    print("#### Gram K += X Xᵀ: the core's CUDA kernels vs torch.matmul(x, x.T) (ms; ratio = torch / ours; "
          "error: max |K − K_float64| / max |K_float64|)\n")
    print("| n × d | dtype | ours on | ours | torch.matmul | ratio | error |\n|---|---|---|---|---|---|---|")
    print("\n".join(gram_rows(args.repeats)))
    print("\n#### ORM matrix (biased CKA) from Grams on the GPU: formed there vs copied to the CPU core "
          "(ms; ratio = CPU / GPU; error: max |difference|)\n")
    print("| Grams | GPU | copy + CPU core | ratio | error |\n|---|---|---|---|---|")
    print("\n".join(orm_rows(args.repeats)))
    print("\n#### Fake quantization forward + backward on CUDA (ms; ratio = torch / ours)\n")
    print("| workload | scale | torch op | ours | torch | ratio | forward bit-for-bit equal |\n"
          "|---|---|---|---|---|---|---|")
    print("\n".join(fake_quant_rows(args.repeats)))
    print("\n#### Fake quantization forward alone (no autograd; ms; ratio = torch / ours; bandwidth: 8 bytes per "
          "element over our time, and its share of the device's peak)\n")
    print("| workload | ours | torch fixed-scale op | ratio | our bandwidth | share of peak |\n|---|---|---|---|---|---|")
    print("\n".join(fake_quant_forward_rows(args.repeats)))
    print("\n#### plan() on a ResNet-50 on the GPU, N = 64, 224 px, budget 16 MiB\n")
    print("| measure | value |\n|---|---|")
    print("\n".join(plan_rows(args.repeats)))
    print("\n#### plan() (OMPQ) vs one no-grad forward on torchvision architectures, N = 64, 224 px, random init, "
          "budget 4 bits (ms; ../shared/gpu/tv_plan_gpu.py's measurement)\n")
    print("| arch | layers | forward | plan() | plan / forward | avg bits | plan() stages (ms) |\n"
          "|---|---|---|---|---|---|---|")
    print("\n".join(torchvision_rows(args.repeats)))


if __name__ == "__main__":
    main()
