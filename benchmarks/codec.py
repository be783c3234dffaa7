"""Codec benchmark on real pseudo-gradients of the stdlib-lm task; prints one JSON document.

Pseudo-gradients: build the task's model, run ``--steps`` AdamW steps (lr 3e-3, batch
16, one optimizer kept across rounds) per round from the current parameters; the
round's delta is params_before - params_after; the next round continues from the
trained parameters. For each density x bits it reports the compression ratio against
fp32, encode/decode throughput (MB/s of fp32 input), the one-shot relative L2 error,
and the relative error of the sum of R transmitted updates against the sum of the true
deltas, without and with error feedback (the residual carried to the next round).
hivemind's Uniform8BitQuantization and BlockwiseQuantization run on the same tensors
as the reference, and section ``bnb_vs_codec`` measures bitsandbytes against the codec's
own (numpy) quantization of the kept values (see protocol/quant.py for the decision).

    python benchmarks/codec.py            # ~1-2 minutes on 2 shared cores
    python benchmarks/codec.py --quick    # ~30 s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from swarmtrain.peer.config import preset
from swarmtrain.peer.training.tasks import load_task
from swarmtrain.protocol import decode_update, encode_update, encode_update_and_reconstruct
from swarmtrain.protocol.layout import tensor_layout
from swarmtrain.protocol.quant import dequantize, quantize
from swarmtrain.protocol.sparsify import select_topk

Tensors = dict[str, torch.Tensor]
DENSITIES = (0.01, 0.02, 0.05)
BITS = (8, 4, 2)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version(), "torch": torch.__version__,
                                "numpy": np.__version__}
    for mod in ("msgpack", "hivemind", "bitsandbytes"):
        try:
            versions[mod] = str(getattr(__import__(mod), "__version__", None) or __import__(mod).version)
        except Exception as e:  # a missing optional package is reported, not fatal
            versions[mod] = f"unavailable ({type(e).__name__})"
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "versions": versions}


def pseudo_gradients(preset_name: str, rounds: int, steps: int, seed: int) -> tuple[list[Tensors], dict[str, Any]]:
    """``rounds`` consecutive deltas of ``steps`` AdamW steps each on one model."""
    config = preset(preset_name)
    task = load_task(config)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    batches = task.train_batches(seed)
    deltas: list[Tensors] = []
    losses: list[float] = []
    start = time.perf_counter()
    for _ in range(rounds):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model, next(batches))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        losses.append(loss.item())
        deltas.append({n: before[n] - p.detach() for n, p in model.named_parameters()})
    numel = sum(t.numel() for t in deltas[0].values())
    info = {"task": config.task, "preset": preset_name, "model": vars(config.model), "parameters": numel,
            "tensors": len(deltas[0]), "rounds": rounds, "steps_per_round": steps, "lr": 3e-3,
            "batch_size": config.train.batch_size, "train_loss_per_round": [round(x, 4) for x in losses],
            "train_seconds": round(time.perf_counter() - start, 2)}
    return deltas, info


def fp32_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return 4 * sum(t.numel() for t in tensors.values())


def rel_l2(approx: Mapping[str, torch.Tensor], exact: Mapping[str, torch.Tensor]) -> float:
    num = sum(float((approx[n].double() - exact[n].double()).square().sum()) for n in exact)
    den = sum(float(exact[n].double().square().sum()) for n in exact)
    return (num / den) ** 0.5 if den else 0.0


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def add(a: Tensors | None, b: Mapping[str, torch.Tensor]) -> Tensors:
    return {n: b[n].clone() for n in b} if a is None else {n: a[n] + b[n] for n in b}


def summarize(name: str, deltas: list[Tensors], compress: Callable[[Tensors], tuple[int, Tensors]],
              encode_s: list[float], decode_s: list[float]) -> dict[str, Any]:
    """Common report: ratio, throughput, one-shot error, sum errors with and without EF."""
    sizes, one_shot = [], []
    sent_sum = true_sum = ef_sum = None
    residual: Tensors = {n: torch.zeros_like(t) for n, t in deltas[0].items()}
    for delta in deltas:
        size, rec = compress(delta)
        sizes.append(size)
        one_shot.append(rel_l2(rec, delta))
        sent_sum, true_sum = add(sent_sum, rec), add(true_sum, delta)
        with_ef = {n: delta[n] + residual[n] for n in delta}
        _, rec_ef = compress(with_ef)
        residual = {n: with_ef[n] - rec_ef[n] for n in delta}
        ef_sum = add(ef_sum, rec_ef)
    mb = fp32_bytes(deltas[0]) / 1e6
    assert sent_sum is not None and true_sum is not None and ef_sum is not None
    return {
        "codec": name,
        "payload_bytes": int(statistics.median(sizes)),
        "ratio_vs_fp32": round(fp32_bytes(deltas[0]) / statistics.median(sizes), 1),
        "encode_MBps": round(mb / statistics.median(encode_s), 1),
        "decode_MBps": round(mb / statistics.median(decode_s), 1),
        "rel_err_one_shot": round(statistics.mean(one_shot), 4),
        "rel_err_sum_no_ef": round(rel_l2(sent_sum, true_sum), 4),
        "rel_err_sum_ef": round(rel_l2(ef_sum, true_sum), 4),
    }


def bench_swarmtrain(deltas: list[Tensors], density: float, bits: int, repeats: int) -> dict[str, Any]:
    encode_s, decode_s = [], []
    for delta in deltas:
        t, payload = timed(lambda: encode_update(delta, density=density, bits=bits), repeats)
        encode_s.append(t)
        decode_s.append(timed(lambda: decode_update(payload), repeats)[0])

    def compress(tensors: Tensors) -> tuple[int, Tensors]:
        payload, rec = encode_update_and_reconstruct(tensors, density=density, bits=bits)
        return len(payload), rec

    report = summarize(f"swarmtrain d={density} b={bits}", deltas, compress, encode_s, decode_s)
    return {"density": density, "bits": bits, **report}


def bench_large_tensor(deltas: list[Tensors], numel: int, repeats: int) -> list[dict[str, Any]]:
    """Throughput without per-tensor overhead: one big tensor tiled from the real deltas."""
    flat = torch.cat([t.reshape(-1) for d in deltas for t in d.values()])
    big = {"tiled": flat.repeat(numel // flat.numel() + 1)[:numel].contiguous()}
    mb = fp32_bytes(big) / 1e6
    out = []
    for density in DENSITIES:
        for bits in BITS:
            t_enc, payload = timed(lambda: encode_update(big, density=density, bits=bits), repeats)
            t_dec, _ = timed(lambda: decode_update(payload), repeats)
            out.append({"density": density, "bits": bits, "numel": numel,
                        "ratio_vs_fp32": round(fp32_bytes(big) / len(payload), 1),
                        "encode_MBps": round(mb / t_enc, 1), "decode_MBps": round(mb / t_dec, 1)})
    return out


def bench_hivemind(deltas: list[Tensors], repeats: int) -> list[dict[str, Any]]:
    from hivemind.compression import BlockwiseQuantization, CompressionInfo, Uniform8BitQuantization

    out = []
    for codec in (Uniform8BitQuantization(), BlockwiseQuantization()):
        def compress_all(tensors: Tensors, codec: Any = codec) -> list[Any]:
            return [codec.compress(t, CompressionInfo.from_tensor(t, key=n)) for n, t in tensors.items()]

        def extract_all(msgs: list[Any], names: list[str], codec: Any = codec) -> Tensors:
            return {n: codec.extract(m).float() for n, m in zip(names, msgs)}

        encode_s, decode_s = [], []
        for delta in deltas:
            t, msgs = timed(lambda: compress_all(delta), repeats)
            encode_s.append(t)
            decode_s.append(timed(lambda: extract_all(msgs, list(delta)), repeats)[0])

        def compress(tensors: Tensors) -> tuple[int, Tensors]:
            msgs = compress_all(tensors)
            return sum(m.ByteSize() for m in msgs), extract_all(msgs, list(tensors))

        out.append(summarize(f"hivemind {type(codec).__name__}", deltas, compress, encode_s, decode_s))
    return out


def kept_values(deltas: list[Tensors], density: float, chunk: int = 4096) -> np.ndarray:
    """The kept values of every full chunk, as the codec selects them: ``[chunks, k]``."""
    rows = []
    for delta in deltas:
        for t in delta.values():
            flat = t.reshape(-1).float().numpy()
            layout = tensor_layout(flat.size, density=density, bits=8, chunk=chunk)
            if layout.full_rows and layout.keep < chunk:
                m = flat[: layout.full_rows * chunk].reshape(layout.full_rows, chunk)
                rows.append(np.take_along_axis(m, select_topk(m, layout.keep), axis=1))
    return np.concatenate(rows)


def bench_bnb_vs_codec(deltas: list[Tensors], repeats: int) -> dict[str, Any]:
    """8-bit quantization of the kept values: the codec's own path vs bitsandbytes.

    bitsandbytes' blockwise kernels need blocks of 64..4096 values and a chunk keeps 41
    (1 % of 4096), so each chunk's values are zero-padded to a 64-value block; with the
    linear signed 256-level code the levels are the codec's own.
    """
    try:
        import bitsandbytes.functional as bnbf
    except Exception as e:  # bitsandbytes is optional for the codec
        return {"available": False, "reason": f"{type(e).__name__}: {e}"}
    kept = kept_values(deltas, 0.01)
    kept_t = torch.from_numpy(kept)
    rows, k = kept.shape
    elems = kept.size
    linear = bnbf.create_linear_map(signed=True, total_bits=8)

    def codec_path() -> np.ndarray:
        codes, steps = quantize(kept, 8)
        return dequantize(codes, steps, 8)

    def bnb_path(code: torch.Tensor | None) -> np.ndarray:
        padded = torch.zeros(rows, 64)
        padded[:, :k] = kept_t
        q, state = bnbf.quantize_blockwise(padded.reshape(-1), code=code, blocksize=64)
        return bnbf.dequantize_blockwise(q, state).reshape(rows, 64)[:, :k].numpy()

    def quantize_only_bnb() -> Any:
        padded = torch.zeros(rows, 64)
        padded[:, :k] = kept_t
        return bnbf.quantize_blockwise(padded.reshape(-1), code=linear, blocksize=64)

    t_codec, (codes, _) = timed(lambda: quantize(kept, 8), repeats)
    t_bnb, (bnb_codes, _) = timed(quantize_only_bnb, repeats)
    # Same linear code, same index order: index q means (2q - 255) / 255 * absmax.
    same_codes = float((bnb_codes.reshape(rows, 64)[:, :k].numpy() == codes).mean())

    def err(rec: np.ndarray) -> float:
        return float(np.linalg.norm(rec - kept) / np.linalg.norm(kept))

    return {
        "available": True, "kept_values": elems, "rows": rows, "k": k,
        "codec_quantize_Mvalues_per_s": round(elems / t_codec / 1e6, 2),
        "bnb_linear_quantize_Mvalues_per_s": round(elems / t_bnb / 1e6, 2),
        "codec_rel_err": round(err(codec_path()), 6),
        "bnb_linear_rel_err": round(err(bnb_path(linear)), 6),
        "bnb_dynamic_rel_err_not_wire_compatible": round(err(bnb_path(None)), 6),
        "bnb_linear_codes_equal_to_codec_fraction": round(same_codes, 4),
        "chosen": "codec (numpy)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, steps and timing repeats")
    parser.add_argument("--preset", default="demo", help="swarm preset whose task/model to use (default demo)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds R (default 8, quick 4)")
    parser.add_argument("--steps", type=int, default=None, help="AdamW steps per round (default 50, quick 20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = args.rounds or (4 if args.quick else 8)
    steps = args.steps or (20 if args.quick else 50)
    repeats = 2 if args.quick else 5
    started = time.perf_counter()
    deltas, data = pseudo_gradients(args.preset, rounds, steps, args.seed)
    results = [bench_swarmtrain(deltas, d, b, repeats) for d in DENSITIES for b in BITS]
    doc = {
        "benchmark": "codec",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine_info(),
        "data": data,
        "swarmtrain": results,
        "swarmtrain_one_large_tensor": bench_large_tensor(deltas, 1 << (20 if args.quick else 22), repeats),
        "hivemind": bench_hivemind(deltas, repeats),
        "bnb_vs_codec": bench_bnb_vs_codec(deltas, repeats),
        "notes": [
            "throughput = fp32 MB of the whole model's update / median seconds per encode or decode; "
            "on a tiny model it is dominated by per-tensor overhead, see swarmtrain_one_large_tensor",
            "rel_err_* = ||sent - true||_2 / ||true||_2 over all parameters; *_sum over R rounds",
            "ratio includes small tensors (biases, norms): a tensor under one chunk keeps "
            "min(n, round(density*chunk)) values, so they dominate the payload of a tiny model",
        ],
        "seconds": 0.0,
    }
    doc["seconds"] = round(time.perf_counter() - started, 1)
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
