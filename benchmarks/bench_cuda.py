"""The verification pass on a CUDA device: cost, speed-up over the exact method and over the
CPU, and `archlint check --device cuda` end to end. Needs a GPU (a lent machine:
benchmarks/gpu_check.sh runs this with the CUDA tests and the accuracy benchmark).

1. CIFAR ResNet-18 (BasicBlock, batch 128 x 3x32x32, train mode as built): one plain
   forward pass (eval, no_grad) against measure() with all per-node statistics (the
   population value riding along), without the population value, and with tracing; medians
   of REPEATS, each timed between torch.cuda.synchronize() calls. TF32 as PyTorch ships it
   (cuDNN convolutions on, matmul off) and off.
2. The eval-mode model's output NLC: measure() against exact per-sample Jacobians
   (vmap(jacrev)) on the GPU, 10 and 1000 outputs; the exact method on SUBSET samples
   (per-sample Jacobians are independent, so its time scales with the samples).
3. The same measure() on this machine's CPU (all its cores): the GPU's speed-up.
4. `python -m archlint check --no-cache` on fixture files, fresh interpreters, --device cuda
   against --device cpu (the VGG-19 and the tanh MLP are measured; the ResNet-18 is not).
5. Where measure()'s time goes on the GPU (profiles).

    python benchmarks/bench_cuda.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time

import common  # noqa: F401  (first: the repository importable)
import torch
from common import N, images
from exact import jacrev_output_nlc, populate_bn
from models import resnet18
from torch.func import jacrev, vmap

from archlint.measure import measure
from archlint.trace import trace

REPEATS = 10
SUBSET = 8


def timed(fn, repeats):
    """Median wall-clock seconds of fn() between device synchronisations, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def part1(x, repeats):
    print("## 1. All per-node statistics, CIFAR ResNet-18 (10 classes), train mode, batch 128, on the GPU\n")
    print("| TF32 convolutions | plain forward | measure() all per-node (population in the pass) | x forward | "
          "population=False | x forward | with tracing | x forward | output NLC (train BN / population) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.manual_seed(0)
        model = resnet18(10).cuda()
        graph = trace(model, (x[:4],), name="ResNet18")
        plain = copy.deepcopy(model).eval()

        def forward():
            with torch.no_grad():
                plain(x)

        for _ in range(3):  # warm-up: cuDNN autotuning, allocator
            forward()
            measure(model, x, graph=graph, device="cuda")
        f, _ = timed(forward, repeats)
        a, report = timed(lambda: measure(model, x, graph=graph, device="cuda"), repeats)
        b, _ = timed(lambda: measure(model, x, graph=graph, device="cuda", population=False), repeats)
        c, _ = timed(lambda: measure(model, x, device="cuda"), max(3, repeats // 3))
        print(f"| {'on (default)' if tf32 else 'off'} | {1000 * f:.2f} ms | {1000 * a:.1f} ms | **{a / f:.1f}x** | "
              f"{1000 * b:.1f} ms | {b / f:.1f}x | {1000 * c:.1f} ms | {c / f:.1f}x | "
              f"{report.output_nlc:.3f} ± {report.output_nlc_se:.3f} / {report.output_nlc_population:.3f} |")
    torch.backends.cudnn.allow_tf32 = True
    print()


def exact_time(model, x, chunk):
    xs = x[:SUBSET]

    def run():
        with torch.no_grad():
            vmap(jacrev(lambda xi: model(xi.unsqueeze(0)).squeeze(0), chunk_size=chunk))(xs)

    seconds, _ = timed(run, 2)
    return seconds * N / SUBSET


def part2_3(x, repeats):
    print("## 2-3. Output NLC of the eval-mode ResNet-18 (populated statistics): measure() on the GPU against the "
          "exact method on the GPU, and against measure() on the CPU\n")
    print(f"| outputs | exact NLC (float64) | measured on GPU ± se | measure() GPU | exact vmap(jacrev) GPU (x{N // SUBSET} of "
          f"{SUBSET} samples) | speed-up | measure() CPU ({torch.get_num_threads()} threads) | measured on CPU | GPU vs CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for classes in (10, 1000):
        torch.manual_seed(0)
        model = resnet18(classes)
        populate_bn(model, (x.cpu(),), N)
        gpu_model = copy.deepcopy(model).cuda()
        measure(gpu_model, x, device="cuda")
        ours, report = timed(lambda: measure(gpu_model, x, device="cuda"), repeats)
        exact = exact_time(gpu_model, x, chunk=None if classes == 10 else 100)
        reference = f"{jacrev_output_nlc(copy.deepcopy(gpu_model).double(), x.double()):.4f}" if classes == 10 else "-"
        xc = x.cpu()
        t = time.perf_counter()
        cpu_report = measure(model, xc, device="cpu")
        cpu_seconds = time.perf_counter() - t
        print(f"| {classes} | {reference} | {report.output_nlc:.4f} ± {report.output_nlc_se:.4f} | {1000 * ours:.0f} ms | "
              f"{exact:.2f} s | **{exact / ours:.0f}x** | {cpu_seconds:.2f} s | {cpu_report.output_nlc:.4f} | "
              f"**{cpu_seconds / ours:.0f}x** |")
    print()


def part4():
    print("## 4. `python -m archlint check --no-cache FILE` end to end (fresh interpreter, CUDA initialisation included)\n")
    for code in ("import torch", "import torch, archlint.engine", "import torch, archlint.measure.api",
                 "import torch; torch.zeros(1, device='cuda')"):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        print(f"- `python -c \"{code}\"`: {time.perf_counter() - t:.2f} s")
    print()
    print("| file | --device cpu | --device cuda | findings (cuda) |")
    print("|---|---|---|---|")
    for name in ("good_resnet18_cifar.py", "bad_vgg19_no_bn.py", "bad_hot_tanh_mlp.py"):
        path = os.path.join(common.REPO, "fixtures", "architectures", name)
        seconds, lines = {}, ""
        for device in ("cpu", "cuda", "cpu", "cuda"):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "archlint", "check", "--no-cache", "--device", device,
                                  "--output-format", "concise", path], capture_output=True, text=True)
            seconds.setdefault(device, []).append(time.perf_counter() - t)
            if device == "cuda":
                lines = "; ".join(out.stdout.strip().splitlines()) or "none"
        print(f"| {name} | {min(seconds['cpu']):.2f} s | {min(seconds['cuda']):.2f} s | {lines} |")
    print()


def part5(x):
    """Where measure()'s time goes on the GPU: Python functions (cProfile, cumulative) and
    the CUDA runtime calls that wait for the device."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = resnet18(10).cuda()
    graph = trace(model, (x[:4],), name="ResNet18")
    measure(model, x, graph=graph, device="cuda")
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    measure(model, x, graph=graph, device="cuda")
    torch.cuda.synchronize()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(r"archlint|functorch|fx/", 25)
    print("## 5. Where the time goes (cProfile, cumulative, archlint/functorch/fx functions)\n")
    print("```\n" + "\n".join(out.getvalue().strip().splitlines()[-32:]) + "\n```\n")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        measure(model, x, graph=graph, device="cuda")
        torch.cuda.synchronize()
    print("```\n" + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40) + "\n```\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)  # the CPU comparison gets the whole machine
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CPU threads {torch.get_num_threads()}\n")
    x = images(N, torch.Generator().manual_seed(0)).cuda()
    part1(x, args.repeats)
    part2_3(x, args.repeats)
    part4()
    part5(x)
    return 0


if __name__ == "__main__":
    sys.exit(main())
