#!/usr/bin/python3
"""The layer-wise grid written the way a researcher writes it in PyTorch: for every cell
(layer j, weight bits b), the whole network is run again over the evaluation set with layer j
fake-quantized by torch's own MinMaxObserver and fake_quantize_per_tensor_affine.

This is qsweep's peer for speed (bench/layerwise_bench.cpp times a sample of cells and
extrapolates) and a sanity check of its numbers (it prints the top-1 and noise of each cell
it ran). The network comes from the same ONNX file, executed op by op with torch.nn.functional;
BatchNormalization after a Conv is folded with torch.nn.utils.fusion.fuse_conv_bn_weights.

Prints progress on stderr and one JSON object on the last line of stdout.
  /usr/bin/python3 bench/torch_grid.py --onnx models/qsweep_resnet.onnx --cells 0:4,3:8
  python3 bench/torch_grid.py --onnx bench/resnet18.onnx --synthetic 1000 --device cuda --cells 0:4,20:8

--device cuda runs it on the GPU the way such a script does there: the weights and the
evaluation set are moved to the device once, TF32 is off (float32 numbers), one warm-up
forward precedes the timed passes, and the timers are read after torch.cuda.synchronize().
--synthetic N replaces the dataset by N seeded normal-valued images of the model's input shape
with seeded random labels (for ImageNet-shaped networks such as bench/export_resnet18.py's,
with no dataset at hand); calibration then uses the first --calibration of them.
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch.ao.quantization import MinMaxObserver

ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish"}


def load_idx(folder, split):
    prefix = "train" if split == "train" else "t10k"

    def read(stem):
        for ext in (".gz", ""):
            p = os.path.join(folder, stem + ext)
            if os.path.exists(p):
                with (gzip.open(p) if ext else open(p, "rb")) as f:
                    return f.read()
        raise SystemExit(f"torch_grid.py: no {stem} in {folder}")

    img = read(f"{prefix}-images-idx3-ubyte")
    lab = read(f"{prefix}-labels-idx1-ubyte")
    n, h, w = (int.from_bytes(img[i:i + 4], "big") for i in (4, 8, 12))
    images = torch.frombuffer(bytearray(img[16:]), dtype=torch.uint8).view(n, 1, h, w)
    labels = torch.frombuffer(bytearray(lab[8:]), dtype=torch.uint8).long()
    return images, labels


class OnnxNet:
    """Runs an ONNX graph with torch ops; enumerates layers as qsweep (method.md) does."""

    def __init__(self, path):
        model = onnx.load(path)
        g = model.graph
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
        inits = set(self.consts)
        graph_input = next(i for i in g.input if i.name not in inits)
        self.input = graph_input.name
        self.input_dims = [d.dim_value if d.HasField("dim_value") else None
                           for d in graph_input.type.tensor_type.shape.dim]
        self.output = g.output[0].name
        self.nodes = []
        for n in g.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if n.op_type == "Constant":
                self.consts[n.output[0]] = torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
                continue
            if n.op_type == "Identity" and n.input[0] in self.consts:  # shared initializers (torch's exporter)
                self.consts[n.output[0]] = self.consts[n.input[0]]
                continue
            self.nodes.append({"op": n.op_type, "in": list(n.input), "out": n.output[0], "attrs": attrs,
                               "name": n.name or f"{n.op_type}_{len(self.nodes)}"})
        self._fold_bn()
        consumers = {}
        for k, n in enumerate(self.nodes):
            for i in n["in"]:
                consumers.setdefault(i, []).append(k)
        self.layers = []
        for k, n in enumerate(self.nodes):
            if n["op"] in ("Conv", "Gemm", "MatMul") and n["in"][1] in self.consts:
                act = None
                users = consumers.get(n["out"], [])
                if len(users) == 1 and n["out"] != self.output and self.nodes[users[0]]["op"] in ACTIVATIONS \
                        and self.nodes[users[0]]["in"][0] == n["out"]:
                    act = users[0]
                out = self.nodes[act]["out"] if act is not None else n["out"]
                self.layers.append({"node": k, "act": act, "input": n["in"][0], "output": out, "name": n["name"]})

    def _fold_bn(self):
        producers = {n["out"]: k for k, n in enumerate(self.nodes)}
        uses = {}
        for n in self.nodes:
            for i in n["in"]:
                uses[i] = uses.get(i, 0) + 1
        kept = []
        for n in self.nodes:
            if n["op"] == "BatchNormalization":
                p = producers.get(n["in"][0])
                if p is not None and self.nodes[p]["op"] == "Conv" and uses[n["in"][0]] == 1:
                    conv = self.nodes[p]
                    w = self.consts[conv["in"][1]]
                    b = self.consts[conv["in"][2]] if len(conv["in"]) > 2 and conv["in"][2] else None
                    scale, bias, mean, var = (self.consts[i] for i in n["in"][1:5])
                    fw, fb = torch.nn.utils.fusion.fuse_conv_bn_weights(
                        w, b, mean, var, n["attrs"].get("epsilon", 1e-5), scale, bias)
                    wn, bn = conv["name"] + ".folded_w", conv["name"] + ".folded_b"
                    self.consts[wn], self.consts[bn] = fw.detach(), fb.detach()
                    conv["in"] = [conv["in"][0], wn, bn]
                    conv["out"] = n["out"]
                    continue
            kept.append(n)
        self.nodes = kept

    def to(self, device):
        self.consts = {k: v.to(device) for k, v in self.consts.items()}
        return self

    def run_node(self, n, x, w=None):
        op, a, c = n["op"], n["attrs"], self.consts
        arg = lambda i: c[n["in"][i]] if n["in"][i] in c else None  # noqa: E731
        if op == "Conv":
            w = c[n["in"][1]] if w is None else w
            b = arg(2) if len(n["in"]) > 2 and n["in"][2] else None
            pads = a.get("pads", [0, 0, 0, 0])
            if pads[0] != pads[2] or pads[1] != pads[3]:
                x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
                pads = [0, 0, 0, 0]
            return F.conv2d(x, w, b, a.get("strides", [1, 1]), (pads[0], pads[1]), a.get("dilations", [1, 1]),
                            a.get("group", 1))
        if op == "Gemm":
            w = c[n["in"][1]] if w is None else w
            y = a.get("alpha", 1.0) * (x @ (w.t() if a.get("transB", 0) else w))
            if len(n["in"]) > 2 and n["in"][2]:
                y = y + a.get("beta", 1.0) * c[n["in"][2]]
            return y
        if op == "MatMul":
            return x @ (c[n["in"][1]] if w is None else w)
        if op == "BatchNormalization":
            return F.batch_norm(x, arg(3), arg(4), arg(1), arg(2), False, 0.0, a.get("epsilon", 1e-5))
        if op == "Relu":
            return F.relu(x)
        if op == "Clip":
            lo = arg(1).item() if len(n["in"]) > 1 and n["in"][1] else a.get("min", float("-inf"))
            hi = arg(2).item() if len(n["in"]) > 2 and n["in"][2] else a.get("max", float("inf"))
            return torch.clamp(x, lo, hi)
        if op == "LeakyRelu":
            return F.leaky_relu(x, a.get("alpha", 0.01))
        if op == "Sigmoid":
            return torch.sigmoid(x)
        if op == "HardSigmoid":
            return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1)
        if op == "HardSwish":
            return F.hardswish(x)
        if op == "MaxPool":
            p = a.get("pads", [0, 0, 0, 0])
            return F.max_pool2d(x, a["kernel_shape"], a.get("strides", a["kernel_shape"]), (p[0], p[1]),
                                ceil_mode=bool(a.get("ceil_mode", 0)))
        if op == "AveragePool":
            p = a.get("pads", [0, 0, 0, 0])
            return F.avg_pool2d(x, a["kernel_shape"], a.get("strides", a["kernel_shape"]), (p[0], p[1]),
                                ceil_mode=bool(a.get("ceil_mode", 0)),
                                count_include_pad=bool(a.get("count_include_pad", 0)))
        if op == "GlobalAveragePool":
            return F.adaptive_avg_pool2d(x, 1)
        if op == "Flatten":
            return torch.flatten(x, a.get("axis", 1))
        if op in ("Identity", "Dropout"):
            return x
        if op == "Softmax":
            return F.softmax(x, a.get("axis", -1 if self.opset >= 13 else 1))
        raise SystemExit(f"torch_grid.py: op {op} (node {n['name']}) is not supported by the peer")

    def forward(self, x, record=None, q=None):
        """q: (layer index, fake-quantized weight, input quantizer, output quantizer)."""
        env = {self.input: x}
        get = lambda name: env[name] if name in env else self.consts[name]  # noqa: E731
        qn = self.layers[q[0]] if q else None
        for k, n in enumerate(self.nodes):
            if n["op"] in ("Add", "Mul", "Concat"):
                ins = [get(i) for i in n["in"]]
                if n["op"] == "Add":
                    y = ins[0] + ins[1]
                elif n["op"] == "Mul":
                    y = ins[0] * ins[1]
                else:
                    y = torch.cat(ins, n["attrs"].get("axis", 1))
            elif qn is not None and k == qn["node"]:
                y = self.run_node(n, q[2](get(n["in"][0])), q[1])  # input quantized on this path only
                if qn["act"] is None:
                    y = q[3](y)
            else:
                y = self.run_node(n, get(n["in"][0]))
                if qn is not None and k == qn["act"]:
                    y = q[3](y)
            env[n["out"]] = y
            if record is not None:
                record(n["out"], y)
        return env[self.output]


def observer(bits, device="cpu"):
    return MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0,
                          quant_max=2 ** bits - 1).to(device)


def quantizer(obs):
    scale, zp = obs.calculate_qparams()
    s, z, lo, hi = float(scale), int(zp), obs.quant_min, obs.quant_max
    return lambda t: torch.fake_quantize_per_tensor_affine(t, s, z, lo, hi)


def synthetic_set(net, n, device):
    """n seeded N(0,1) images of the model's input shape and seeded labels in [0, classes)."""
    dims = net.input_dims[1:]
    if len(dims) != 3 or any(d is None or d <= 0 for d in dims):
        raise SystemExit(f"torch_grid.py: --synthetic needs a model input of fixed shape (N, C, H, W); "
                         f"{net.input} has {net.input_dims}")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n, *dims, generator=gen)
    with torch.no_grad():
        classes = int(net.forward(images[:1].to(device)).shape[1])
    labels = torch.randint(0, classes, (n,), generator=gen)
    return images, labels


def conv_kernels(net, x, top=8):
    """The GPU kernels of one float forward of x, by total device time (the convolution-like
    ones: which algorithms PyTorch's default cuDNN heuristics picked), as [name, ms] pairs."""
    import re
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        net.forward(x)
        torch.cuda.synchronize()
    pattern = re.compile(r"conv|wino|fft|gemm|xmma|implicit|cudnn", re.IGNORECASE)
    found = []
    for item in prof.key_averages():
        us = getattr(item, "device_time_total", None)
        if us is None:
            us = getattr(item, "cuda_time_total", 0.0)
        if pattern.search(item.key) and us > 0:
            found.append([item.key[:120], us / 1000.0])
    return sorted(found, key=lambda kv: -kv[1])[:top]


def in_top5(y, labels):
    """Per row: whether the label is among the 5 largest logits (all of them with fewer classes)."""
    top = torch.topk(y, min(5, y.shape[1]), dim=1).indices
    return (top == labels.unsqueeze(1)).any(dim=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--mean", type=float, default=0.2860)
    ap.add_argument("--std", type=float, default=0.3530)
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--act-bits", type=int, default=8)
    ap.add_argument("--cells", required=True, help="comma-separated LAYER:BITS")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N",
                    help="N generated images of the model's input shape instead of the dataset")
    ap.add_argument("--repeat", type=int, default=1, metavar="R",
                    help="time the float pass and each cell R times and keep the fastest (machine noise)")
    args = ap.parse_args()
    if args.repeat < 1:
        raise SystemExit("torch_grid.py: --repeat must be at least 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("torch_grid.py: --device cuda, but torch sees no CUDA device")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    net = OnnxNet(args.onnx).to(device)
    if args.synthetic > 0:
        test_x, test_y = synthetic_set(net, args.synthetic, device)
        train_x = test_x
        normalize = lambda x: x  # noqa: E731  (already float, zero-mean unit-variance)
    else:
        train_x, _ = load_idx(args.data, "train")
        test_x, test_y = load_idx(args.data, "test")
        normalize = lambda u8: ((u8.float() / 255.0) - args.mean) / args.std  # noqa: E731
    test_x, test_y = test_x[:args.images], test_y[:args.images]
    calibration = min(args.calibration, len(train_x))
    train_x = train_x[:calibration].to(device)  # the evaluation set and labels go to the device once
    test_x, test_y = test_x.to(device), test_y.to(device)

    with torch.no_grad():
        # Calibration: one MinMaxObserver per tensor over the first images of the train split.
        observers = {}

        def record(name, t):
            if name not in observers:
                observers[name] = observer(args.act_bits, device)
            observers[name](t)

        record(net.input, normalize(train_x[:calibration]))
        for b in range(0, calibration, args.batch):
            x = normalize(train_x[b:min(b + args.batch, calibration)])
            net.forward(x, record=record)

        if cuda:  # warm-up: cuDNN handles, kernels, the allocator's first blocks
            x = normalize(test_x[:args.batch])
            for _ in range(2):
                net.forward(x)
            sync()

        reference_seconds = float("inf")
        for _ in range(args.repeat):
            sync()
            t0 = time.perf_counter()
            reference = [net.forward(normalize(test_x[b:b + args.batch])) for b in range(0, len(test_x), args.batch)]
            sync()
            reference_seconds = min(reference_seconds, time.perf_counter() - t0)
        float_top1 = 100.0 * sum(int((r.argmax(1) == test_y[i * args.batch:(i + 1) * args.batch]).sum())
                                 for i, r in enumerate(reference)) / len(test_x)
        float_top5 = 100.0 * sum(int(in_top5(r, test_y[i * args.batch:(i + 1) * args.batch]).sum())
                                 for i, r in enumerate(reference)) / len(test_x)

        cells, seconds = [], 0.0
        for spec in args.cells.split(","):
            j, bits = (int(v) for v in spec.split(":"))
            L = net.layers[j]
            dt = float("inf")
            for _ in range(args.repeat):
                sync()
                t0 = time.perf_counter()
                w = net.consts[net.nodes[L["node"]]["in"][1]]
                wobs = observer(bits, device)
                wobs(w)
                wq = quantizer(wobs)(w)
                q = (j, wq, quantizer(observers[L["input"]]), quantizer(observers[L["output"]]))
                noise = torch.zeros((), dtype=torch.float64, device=device)
                correct = torch.zeros((), dtype=torch.int64, device=device)
                correct5 = torch.zeros((), dtype=torch.int64, device=device)
                for i, b in enumerate(range(0, len(test_x), args.batch)):
                    y = net.forward(normalize(test_x[b:b + args.batch]), q=q)
                    noise += ((y - reference[i]) ** 2).sum(dtype=torch.float64)
                    correct += (y.argmax(1) == test_y[b:b + args.batch]).sum()
                    correct5 += in_top5(y, test_y[b:b + args.batch]).sum()
                noise, correct, correct5 = float(noise), int(correct), int(correct5)  # waits for the device
                sync()
                dt = min(dt, time.perf_counter() - t0)
            seconds += dt
            cells.append({"layer": j, "bits": bits, "name": L["name"], "seconds": dt,
                          "noise": noise / len(test_x), "top1": 100.0 * correct / len(test_x),
                          "top5": 100.0 * correct5 / len(test_x)})
            print(f"torch_grid: layer {j} {bits}-bit: {dt:.2f} s, top-1 {cells[-1]['top1']:.2f}", file=sys.stderr)

        kernels = []
        if cuda:
            try:
                kernels = conv_kernels(net, normalize(test_x[:args.batch]))
            except Exception as e:  # the profiler is a diagnostic: never fail the timing for it
                print(f"torch_grid: no kernel profile ({e})", file=sys.stderr)

    print(json.dumps({"torch_version": torch.__version__, "threads": args.threads, "images": len(test_x),
                      "layers": len(net.layers), "float_top1": float_top1, "float_top5": float_top5,
                      "reference_seconds": reference_seconds,
                      "seconds_per_cell": seconds / len(cells), "cells": cells,
                      "device": torch.cuda.get_device_name(device) if cuda else "cpu", "batch": args.batch,
                      "synthetic": args.synthetic, "repeat": args.repeat, "conv_kernels": kernels}))

if __name__ == "__main__":
    main()
