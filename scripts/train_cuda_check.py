#!/usr/bin/env python
"""Train the default (~23M parameter) network for a few hundred steps with AMP on CUDA.

Synthetic patches (random CT-like noise with a labelled blob), the real loss, AdamW and
``torch.amp`` fp16 autocast with ``GradScaler("cuda")``: prints the median step time, peak GPU
memory and the GPU temperatures read through NVML. Exits with a clear message without CUDA.

    python scripts/train_cuda_check.py --steps 300 --batch-size 2 --patch-size 64,160,160
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patch-size", default="64,128,128", help="z,y,x (multiples of 32)")
    parser.add_argument("--preset", default="default", choices=["tiny", "cpu", "default"])
    parser.add_argument("--no-amp", action="store_true", help="fp32 instead of fp16 autocast")
    return parser.parse_args(argv)


def gpu_temperatures() -> dict[str, float]:
    """NVML temperatures per GPU; empty when NVML is missing."""
    from edgepanc.thermal import NvmlSource

    source = NvmlSource()
    return source.read() if source.available else {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("train_cuda_check: no CUDA device visible to torch; nothing to check on this machine")
        return 2
    from edgepanc.networks import build_network, count_parameters
    from edgepanc.training.losses import LossWeights, multitask_loss

    patch = tuple(int(v) for v in args.patch_size.split(","))
    device = torch.device("cuda")
    model = build_network(args.preset).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=3e-5)
    use_amp = not args.no_amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    generator = torch.Generator(device=device).manual_seed(0)
    image = torch.randn((args.batch_size, 1, *patch), device=device, generator=generator)
    label = torch.zeros((args.batch_size, *patch), dtype=torch.long, device=device)
    centre = [s // 2 for s in patch]
    label[
        :,
        centre[0] - 8 : centre[0] + 8,
        centre[1] - 16 : centre[1] + 16,
        centre[2] - 16 : centre[2] + 16,
    ] = 1
    label[
        :,
        centre[0] - 3 : centre[0] + 3,
        centre[1] - 5 : centre[1] + 5,
        centre[2] - 5 : centre[2] + 5,
    ] = 2
    image = image + label.float()[:, None]
    subtype = torch.arange(args.batch_size, device=device) % 3
    print(
        f"{args.preset}: {count_parameters(model):,} parameters, patch {patch}, batch {args.batch_size}, amp {use_amp}"
    )
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            seg, cls = model(image)
        loss, _, _ = multitask_loss(seg, cls, label, subtype, LossWeights())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if step % 50 == 0:
            print(
                f"step {step}: loss {float(loss.detach()):.4f}, {times[-1] * 1000:.1f} ms, temps {gpu_temperatures()}"
            )
    steady = times[min(10, len(times) - 1) :]
    print(f"median step {statistics.median(steady) * 1000:.1f} ms over {len(steady)} steps")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"GPU temperatures (NVML): {gpu_temperatures() or 'NVML not available'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
