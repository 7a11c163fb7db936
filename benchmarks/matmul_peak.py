"""The machine's measured fp32 matmul rate: the ceiling a CPU training step's FLOP/s is compared with.

Times large square fp32 `torch.mm` on the threads torch uses (set them first) and reports the best rate
over several timed repeats, in GFLOP/s. Run alone: `python benchmarks/matmul_peak.py [--threads N]`.
"""

from __future__ import annotations

import argparse
import time

import torch


def matmul_gflops(size: int = 2048, repeats: int = 5, min_seconds: float = 0.5) -> float:
    """Best fp32 `torch.mm` rate of `repeats` windows of at least `min_seconds` each, in GFLOP/s.

    The best (not the median) window is the right ceiling on a shared machine: noise only slows it down.
    """
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up: thread pool, caches
    flops = 2.0 * size**3
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, flops * calls / elapsed / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="side of the square matrices")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows; the best is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rate = matmul_gflops(args.size, args.repeats)
    print(f"fp32 torch.mm {args.size}x{args.size}, {torch.get_num_threads()} threads: {rate:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
