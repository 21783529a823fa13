"""Print docs/BENCHMARKS.md's GPU figures (issue 5), both sides in one process on one device:

* the core's CUDA Gram kernel vs torch.matmul(x, x.T) on the same shapes (float32, float16, bfloat16);
* fake-quant forward+backward (ours vs torch.fake_quantize_per_{channel,tensor}_affine on CUDA);
* plan() end to end on a ResNet-50 that lives on the GPU, N = 64 at 224 px (target: under 1 s),
  against one plain forward of the same batch.

    python bench/report_gpu.py [--repeats 20]

Times are medians of CUDA-event-timed repeats after a warm-up; ratio = torch / ours.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ompq_ext
from ompq_ext.features import gram_accumulate_cuda
from ompq_ext.models import resnet50
from ompq_ext.quant.ops import fake_quantize, quant_range

GRAM_SHAPES = [(32, 200_704), (64, 200_704), (64, 25_088), (128, 802_816)]
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
            ours = cuda_time(lambda: gram_accumulate_cuda(x, k), repeats)
            theirs = cuda_time(lambda: torch.matmul(x, x.T), repeats)
            k.zero_()
            gram_accumulate_cuda(x, k)
            ref = (x.double() @ x.double().T)
            err = ((k - ref).abs().max() / ref.abs().max()).item()
            rows.append(f"| {n} × {d:,} | {str(dtype).split('.')[-1]} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | "
                        f"**{theirs / ours:.2f}** | {err:.1e} |")
    return rows


def fake_quant_rows(repeats):
    rows = []
    for label, shape, axis, bits, signed in FQ_CASES:
        qmin, qmax = quant_range(bits, signed)
        x = (torch.randn(shape, device="cuda") * 2).requires_grad_()
        channels = 1 if axis is None else shape[axis]
        scale = torch.rand(channels, device="cuda") * 0.1 + 0.01
        zero = torch.zeros(channels, device="cuda")
        grad = torch.randn(shape, device="cuda")
        scale_value = scale[0].item()  # torch's per-tensor op takes a Python float: read it once, outside the timing

        def ours():
            y = fake_quantize(x, scale, bits=bits, signed=signed, axis=axis)
            y.backward(grad)

        def theirs():
            if axis is None:
                y = torch.fake_quantize_per_tensor_affine(x, scale_value, 0, qmin, qmax)
            else:
                y = torch.fake_quantize_per_channel_affine(x, scale, zero.int(), axis, qmin, qmax)
            y.backward(grad)

        a, b = cuda_time(ours, repeats), cuda_time(theirs, repeats)
        same = torch.equal(fake_quantize(x.detach(), scale, bits=bits, signed=signed, axis=axis),
                           torch.fake_quantize_per_tensor_affine(x.detach(), scale_value, 0, qmin, qmax) if axis is None
                           else torch.fake_quantize_per_channel_affine(x.detach(), scale, zero.int(), axis, qmin, qmax))
        rows.append(f"| {label} | {a * 1e3:.3f} | {b * 1e3:.3f} | **{b / a:.2f}** | {same} |")
    return rows


def plan_rows(repeats):
    torch.manual_seed(0)
    model = resnet50().cuda().eval()
    x = torch.randn(64, 3, 224, 224, device="cuda")

    def forward():
        with torch.no_grad():
            model(x)
        torch.cuda.synchronize()

    def plan():
        return ompq_ext.plan(model, [x], "16MiB", num_samples=64, progress=False)

    forward()
    plan()
    fwd, pln, stages = [], [], []
    for _ in range(max(3, repeats // 4)):
        t = time.perf_counter()
        forward()
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        p = plan()
        pln.append(time.perf_counter() - t)
        stages.append(p.timing)
    stage = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    f, q = statistics.median(fwd), statistics.median(pln)
    return [f"| plain no-grad forward | {f * 1e3:.0f} ms |", f"| plan() end to end | **{q * 1e3:.0f} ms** (target < 1000) |",
            f"| ratio plan / forward | {q / f:.2f} |",
            "| plan() stages | " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in stage.items()) + " |"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible")
    print(f"Command: `python bench/report_gpu.py --repeats {args.repeats}`  ")
    print(f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}, CUDA {torch.version.cuda}\n")
    print("#### Gram K += X Xᵀ: the core's CUDA kernel vs torch.matmul(x, x.T) (ms; ratio = torch / ours; "
          "error: max |K − K_float64| / max |K_float64|)\n")
    print("| n × d | dtype | ours | torch.matmul | ratio | error |\n|---|---|---|---|---|---|")
    print("\n".join(gram_rows(args.repeats)))
    print("\n#### Fake quantization forward + backward on CUDA (ms; ratio = torch / ours)\n")
    print("| workload | ours | torch | ratio | forward bit-for-bit equal |\n|---|---|---|---|---|")
    print("\n".join(fake_quant_rows(args.repeats)))
    print("\n#### plan() on a ResNet-50 on the GPU, N = 64, 224 px, budget 16 MiB\n")
    print("| measure | value |\n|---|---|")
    print("\n".join(plan_rows(args.repeats)))


if __name__ == "__main__":
    main()
