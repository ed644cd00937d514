"""Data-parallel training on this machine, measured, and a ring-allreduce model of it on a cluster.

    python -m benchmarks.distributed          # starts mpiexec itself; prints Markdown for the README

It measures (on a quiet machine: nothing else heavy running):

- MPI allreduce time at cnnkit's bucket sizes between 2 processes (bus bandwidth
  ``2(p-1)/p x bytes / time``, and latency from an 8-byte allreduce);
- training throughput (images/s) of VGG16 and ResNet-50 on 32x32 images at a global batch of 32,
  with 1 process (all cores) and 2 processes (one core each);
- the overlap of the gradient allreduce with backward: the allreduce of all buckets after
  backward (time ``C``), against what is left to wait after a backward that started each bucket
  as it finished (``E``): overlap = ``(C - E) / C``;

and predicts VGG16's and ResNet-50's (224x224, 32 images per process) speed-up at 2 to 64 processes over 10, 25
and 100 Gbit/s networks: per step, compute ``T`` (from this machine's measured rate of
multiply-adds), communication ``sum over buckets of 2(p-1)/p x bytes / bandwidth + 2(p-1) x
latency``, of which the measured overlap fraction is hidden behind backward (at most backward's
time), speed-up ``p x T / (T + exposed communication)``.

Never part of the tests.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import numpy as np

SIZES = [8, 64 * 2**10, 2**20, 4 * 2**20, 25 * 2**20]   # bytes: latency, then cnnkit's buckets up to 25 MB
GLOBAL_BATCH, STEPS, WARMUP = 32, 5, 2
NETWORKS_GBIT = (10, 25, 100)
LATENCY_SECONDS = 20e-6   # one hop of a ring step on an Ethernet cluster: an assumption, not measured here
PROCESSES = (2, 4, 8, 16, 32, 64)
PER_PROCESS_BATCH = 32
FASTER = 100   # the chart also shows the model for a step this many times faster (GPU-class compute)


#: the networks modelled: VGG16 (few, large gradients: 138 M parameters) and ResNet-50 (many small
#: ones, 25.6 M parameters, 4.1 G multiply-adds per image: much more compute per byte sent)
NETS = {"vgg16": "VGG16", "resnet50": "ResNet-50"}


def small_net(net: str):
    """The network at 32x32 with 10 classes: what this machine trains in the measurements."""
    import cnnkit
    return getattr(cnnkit.models, net)(input_shape=(32, 32, 3), num_classes=10)


def full_net(net: str):
    """The network at 224x224 with 1,000 classes, described without weights (for its sizes)."""
    import cnnkit
    return getattr(cnnkit.models, net)(allocate=False)


def batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, n)


# -- parts run inside mpiexec ------------------------------------------------------------------
def measure_allreduce(group) -> dict:
    results = {}
    for size in SIZES:
        data = np.ones(size // 4, np.float32)
        times = []
        for _ in range(20):
            group.sum(data[:1])   # line the processes up
            started = time.perf_counter()
            group.sum(data)
            times.append(time.perf_counter() - started)
        results[size] = statistics.median(times)
    return results


def measure_throughput(group, net: str = "vgg16") -> float:
    from cnnkit.optim import SGD
    from cnnkit.train import train_step
    model = small_net(net)
    optimizer = SGD(lr=0.001, momentum=0.9)
    optimizer.bind(model.parameters())
    size, rank = (group.size, group.rank) if group is not None else (1, 0)
    x, y = batch(GLOBAL_BATCH)
    part = np.array_split(np.arange(GLOBAL_BATCH), size)[rank]
    times = []
    for step in range(WARMUP + STEPS):
        started = time.perf_counter()
        train_step(model, optimizer, x[part], y[part], group, GLOBAL_BATCH)
        times.append(time.perf_counter() - started)
    return GLOBAL_BATCH / statistics.median(times[WARMUP:])


def measure_overlap(group, net: str = "vgg16") -> dict:
    from cnnkit.distributed import GradientBuckets
    from cnnkit.executor import Tape, run_backward, run_forward
    from cnnkit.ops.loss import softmax_cross_entropy
    from cnnkit.train import scoring_tensors
    model = small_net(net)
    x, y = batch(GLOBAL_BATCH // group.size, seed=group.rank)
    layers = [layer for layer in model.layers if layer.parameters()]
    scores_tensor = scoring_tensors(model)[0]
    everything = frozenset(range(len(model.plan.steps)))
    exposed, full, backward = [], [], []
    for step in range(WARMUP + STEPS):
        for overlapped in (True, False):
            tape = Tape()
            scores, = run_forward(model.plan, [x], [scores_tensor], everything, tape)
            _, dscores = softmax_cross_entropy(scores, y)
            model.zero_grad()
            buckets = GradientBuckets(group, layers)
            started = time.perf_counter()
            run_backward(model.plan, tape, {scores_tensor: dscores}, input_gradients=False,
                         on_layer_done=buckets.layer_done if overlapped else None)
            done = time.perf_counter()
            if not overlapped:
                for layer in reversed(layers):
                    buckets.layer_done(layer)
            buckets.finish()
            if step >= WARMUP:
                (exposed if overlapped else full).append(time.perf_counter() - done)
                if not overlapped:
                    backward.append(done - started)
    return {"exposed": statistics.median(exposed), "allreduce": statistics.median(full),
            "backward": statistics.median(backward), "buckets": len(_plan(model, group.bucket_bytes))}


def _plan(model, bucket_bytes):
    from cnnkit.distributed import plan_buckets
    params = [p for layer in reversed(model.layers) for p in layer.parameters().values()]
    return plan_buckets([(p.size * 4, "<f4") for p in params], bucket_bytes)


def inside_mpi(part: str) -> None:
    from cnnkit.distributed import MPI
    group = MPI()
    name, _, net = part.partition(":")
    with group.training():
        measure = {"allreduce": measure_allreduce, "throughput": measure_throughput, "overlap": measure_overlap}[name]
        result = measure(group, net) if net else measure(group)
    if group.is_root:
        print(json.dumps(result))


# -- the driver -------------------------------------------------------------------------------
def under_mpiexec(part: str, processes: int = 2) -> dict:
    from cnnkit.launch import find_mpiexec
    done = subprocess.run([find_mpiexec(), "-n", str(processes), sys.executable, "-m", "benchmarks.distributed",
                           part], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_process_rate(net: str) -> tuple[float, float]:
    """(images/s, multiply-adds per second of a training step) of one process on all cores."""
    images = measure_throughput(None, net)
    macs = small_net(net).summary(format="dict")["totals"]["macs"]
    return images, 3 * macs * images   # a training step: forward, and backward's two products per layer


def predicted_speedups(net: str, mac_rate: float, overlap: float) -> list[tuple[int, dict[int, float]]]:
    from cnnkit.distributed import BUCKET_BYTES
    model = full_net(net)
    macs = model.summary(format="dict")["totals"]["macs"]
    compute = 3 * macs * PER_PROCESS_BATCH / mac_rate
    backward = compute * 2 / 3
    every = _sizes(model)
    sizes = [sum(every[i] for i in bucket) for bucket in _plan(model, BUCKET_BYTES)]
    rows = []
    for p in PROCESSES:
        row = {}
        for gbit in NETWORKS_GBIT:
            bandwidth = gbit * 1e9 / 8
            comm = sum(2 * (p - 1) / p * size / bandwidth + 2 * (p - 1) * LATENCY_SECONDS for size in sizes)
            exposed = comm - min(overlap * comm, backward)
            row[gbit] = p * compute / (compute + exposed)
        rows.append((p, row))
    return rows


def speedup_chart(title: str, lines: dict[str, list[tuple[int, float]]]) -> str:
    """A Mermaid line chart (text, rendered by GitHub) of speed-up against processes, one line each."""
    processes = [p for p, _ in next(iter(lines.values()))]
    out = ["```mermaid", "xychart-beta", f'    title "Predicted speed-up of {title} training"',
           f"    x-axis \"processes\" [{', '.join(map(str, processes))}]",
           f'    y-axis "speed-up" 0 --> {max(processes)}']
    out += [f"    line [{', '.join(f'{value:.1f}' for _, value in points)}]" for points in lines.values()]
    out.append("```")
    legend = "; ".join(f"line {i + 1}: {label}" for i, label in enumerate(lines))
    return "\n".join(out) + f"\n\nLines in order: {legend}."


def _sizes(model) -> list[int]:
    return [p.size * 4 for layer in reversed(model.layers) for p in layer.parameters().values()]


def main() -> None:
    allreduce = under_mpiexec("allreduce")
    print("| allreduce, 2 processes | time | bus bandwidth |\n|---|---|---|")
    for size, seconds in allreduce.items():
        size = int(size)
        print(f"| {size:,} B | {seconds * 1e6:,.0f} us | {size / seconds / 1e9:.2f} GB/s |")
    for net, title in NETS.items():
        report(net, title)


def report(net: str, title: str) -> None:
    """Measure ``net`` at 1 and 2 processes and print its predicted speed-up on a cluster."""
    images_1, mac_rate = one_process_rate(net)
    images_2 = under_mpiexec(f"throughput:{net}")
    overlap = under_mpiexec(f"overlap:{net}")
    hidden = max(0.0, (overlap["allreduce"] - overlap["exposed"]) / overlap["allreduce"])
    print(f"\n{title} on 32x32 images, global batch {GLOBAL_BATCH}: 1 process {images_1:.1f} images/s, "
          f"2 processes {images_2:.1f} images/s (x{images_2 / images_1:.2f}); "
          f"{mac_rate / 1e9:.1f} G multiply-adds/s in one process's training step")
    print(f"Overlap ({overlap['buckets']} buckets): allreduce after backward {overlap['allreduce'] * 1e3:.1f} ms, "
          f"left to wait when started during backward {overlap['exposed'] * 1e3:.1f} ms, backward "
          f"{overlap['backward'] * 1e3:.0f} ms: {hidden:.0%} hidden")
    print(f"\nPredicted speed-up of {title} (224x224, {PER_PROCESS_BATCH} images per process), ring allreduce, "
          f"latency {LATENCY_SECONDS * 1e6:.0f} us per hop, {hidden:.0%} of communication hidden:\n")
    print("| processes | " + " | ".join(f"{g} Gbit/s" for g in NETWORKS_GBIT) + " |")
    print("|---|" + "---|" * len(NETWORKS_GBIT))
    rows = predicted_speedups(net, mac_rate, hidden)
    for p, row in rows:
        print(f"| {p} | " + " | ".join(f"{row[g]:.1f}" for g in NETWORKS_GBIT) + " |")
    # where the curve bends: the same network with a step FASTER times quicker (an accelerator)
    fast = predicted_speedups(net, FASTER * mac_rate, hidden)
    slowest = min(NETWORKS_GBIT)
    print("\n" + speedup_chart(title, {
        f"this CPU's step, {slowest} Gbit/s": [(p, row[slowest]) for p, row in rows],
        f"a step {FASTER}x faster, {slowest} Gbit/s": [(p, row[slowest]) for p, row in fast],
        f"a step {FASTER}x faster, {max(NETWORKS_GBIT)} Gbit/s": [(p, row[max(NETWORKS_GBIT)]) for p, row in fast],
    }))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        inside_mpi(sys.argv[1])
    else:
        main()
