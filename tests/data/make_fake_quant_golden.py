#!/usr/bin/python3
"""Writes tests/data/fake_quant_torch.json: PyTorch's MinMaxObserver parameters and
fake_quantize_per_tensor_affine / fake_quantize_per_channel_affine outputs for seeded inputs,
as float32 bit patterns, so the C++ test can demand bit-exact agreement with PyTorch.

Regenerate with: /usr/bin/python3 tests/data/make_fake_quant_golden.py
(Debian's python3-torch; the committed file was made with torch 1.13.1.)
"""
import json
import os
import struct

import torch
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

torch.manual_seed(1234)


def bits_of(t):
    return [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in t.flatten().tolist()]


def inputs(kind, n=400):
    if kind == "normal":
        x = torch.randn(n)
    elif kind == "relu":
        x = torch.relu(torch.randn(n) * 3)
    elif kind == "skewed":
        x = torch.randn(n) * 0.05 + 0.3
    elif kind == "negative":
        x = -torch.rand(n) * 7
    elif kind == "heavy":
        x = torch.distributions.StudentT(2.0).sample((n,))
    return x.float()


cases = []
for bits in [2, 3, 4, 5, 6, 7, 8]:
    for symmetric in [False, True]:
        for kind in ["normal", "relu", "skewed", "negative", "heavy"]:
            x = inputs(kind)
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-qmax, quant_max=qmax)
            else:
                obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=2 ** bits - 1)
            obs(x)
            scale, zp = obs.calculate_qparams()
            # Values around the decision boundaries: half-way points (ties) and their neighbours.
            grid = (torch.arange(obs.quant_min, obs.quant_max + 1).float() - zp.float()) * scale
            ties = (grid[:-1] + grid[1:]) / 2
            extra = torch.cat([ties, torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1), grid,
                               torch.tensor([1e9, -1e9, 0.0])])
            xx = torch.cat([x, extra]).float()
            y = torch.fake_quantize_per_tensor_affine(xx, float(scale), int(zp), obs.quant_min, obs.quant_max)
            cases.append({
                "kind": kind, "bits": bits, "symmetric": symmetric,
                "min": bits_of(obs.min_val)[0], "max": bits_of(obs.max_val)[0],
                "scale": bits_of(scale)[0], "zero_point": int(zp),
                "qmin": obs.quant_min, "qmax": obs.quant_max,
                "x": bits_of(xx), "y": bits_of(y),
            })

per_channel = []
for bits in [3, 4, 8]:
    w = (torch.randn(6, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 5.0, 0.5, 0.02]).view(6, 1, 1, 1)).float()
    w[5] = w[5].abs()  # one channel entirely positive: its range must be widened to contain 0
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine,
                                   quant_min=0, quant_max=2 ** bits - 1)
    obs(w)
    scale, zp = obs.calculate_qparams()
    y = torch.fake_quantize_per_channel_affine(w, scale.float(), zp.int(), 0, 0, 2 ** bits - 1)
    per_channel.append({"bits": bits, "shape": list(w.shape), "x": bits_of(w), "y": bits_of(y),
                        "scale": bits_of(scale.float()), "zero_point": zp.tolist()})

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_quant_torch.json")
with open(out, "w") as f:
    json.dump({"torch_version": torch.__version__, "per_tensor": cases, "per_channel": per_channel}, f)
print(out, len(cases), "per-tensor cases,", len(per_channel), "per-channel cases")
