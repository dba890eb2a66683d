#!/usr/bin/env python3
"""Writes the small fixed results folder report_test.cpp draws (run once; the output is committed).

Six layers x weight bits {3, 4, 8} on 1000 images, with every optional file the report reads
(additivity.csv, comparison.csv, layers.csv, weights/<i>.f32 of the three worst layers at 3 bits)
and layer names holding characters that CSV, gnuplot and HTML treat specially.
"""
import csv, json, math, os, random, struct

here = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(5)
bits = [3, 4, 8]
names = ["/conv1/Conv", "/layer1/conv_a/Conv", 'odd <name> & "quotes", commas', "/layer2/conv_b/Conv",
         "/layer2/shortcut/Conv", "/fc/Gemm"]
ops = ["Conv"] * 5 + ["Gemm"]
float_top1, images = 91.3, 1000
# degradation (points, multiples of 0.1) and noise per (layer, bits)
deg = {(0, 3): 6.8, (0, 4): 1.9, (0, 8): 0.0, (1, 3): 0.4, (1, 4): 0.1, (1, 8): -0.1, (2, 3): 2.7, (2, 4): 0.6,
       (2, 8): 0.1, (3, 3): 0.9, (3, 4): 0.2, (3, 8): 0.0, (4, 3): 0.3, (4, 4): -0.2, (4, 8): 0.0, (5, 3): 0.1,
       (5, 4): 0.0, (5, 8): 0.0}
noise = {k: round(10 ** (-(k[1] - 2) * 0.55) * (1 + 3 * max(v, 0)), 6) for k, v in deg.items()}
noise[(5, 8)] = 0.0  # a cell without noise: SQNR inf

rows = []
for i, n in enumerate(names):
    for b in bits:
        d, z = deg[(i, b)], noise[(i, b)]
        correct = round((float_top1 - d) * images / 100)
        sqnr = "inf" if z == 0 else f"{10 * math.log10(25.0 / z):.4f}"
        rows.append([i, n, ops[i], b, 8, f"{z:.9g}", sqnr, f"{100 * correct / images:.4f}", f"{d:.4f}", correct,
                     images, f"{float_top1:.4f}"])
with open(os.path.join(here, "layerwise.csv"), "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow("layer_index,layer_name,op_type,weight_bits,act_bits,noise,sqnr_db,top1,degradation,correct,images,"
               "float_top1".split(","))
    w.writerows(rows)

def worst(b):
    return sorted(range(len(names)), key=lambda i: (-deg[(i, b)], -noise[(i, b)], i))[:3]

summary = {
    "experiment": "fixture", "kind": "layerwise", "mode": "one-pass", "images": images, "float_top1": float_top1,
    "float_correct": round(float_top1 * images / 100), "weight_bits": bits, "act_bits": 8, "scheme": "asymmetric",
    "granularity": "per-tensor",
    "layers": [{"index": i, "name": n, "op_type": ops[i], "activation": "Relu" if i < 5 else "",
                "weight_shape": [8, 4, 3, 3] if i < 5 else [10, 32]} for i, n in enumerate(names)],
    "grid": [{"layer_index": r[0], "layer_name": r[1], "weight_bits": r[3], "noise": float(r[5]),
              "degradation": float(r[8]), "top1": float(r[7]), "correct": r[9]} for r in rows],
    "worst_layers": {str(b): [{"layer_index": i, "layer_name": names[i], "degradation": deg[(i, b)],
                               "noise": noise[(i, b)]} for i in worst(b)] for b in bits},
    "additivity": {"configs": 8, "degradation": {"pearson_r": 0.987, "slope": 1.04},
                   "noise": {"pearson_r": 0.995, "slope": 0.98}},
    "comparison": [{"variant": v} for v in ("minmax", "sawb-global", "sawb-conv1")],
    "grid_seconds": 1.5,
}
with open(os.path.join(here, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")

manifest = {
    "qsweep_version": "0.1.0", "git_commit": "4f1c2e9a0b7d3c5e8f6a1b2c3d4e5f60718293a4",
    "command_line": "qsweep run configs/quickstart.toml --set data.eval.count=1000", "config_file":
    "configs/quickstart.toml", "overrides": ["data.eval.count=1000"], "started_utc": "2026-11-26T22:00:00Z",
    "finished_utc": "2026-11-26T22:00:09Z", "wall_seconds": 9.1, "host": "fixture-host",
    "model": {"path": "/nonexistent/fixture.onnx", "sha256": "ab" * 32, "opset": 13, "layers": 6, "nodes": 14},
    "dataset": {"name": "fashion-mnist", "path": "/usr/share/datasets/fashion-mnist"},
    "backend": {"name": "cpu", "device": "fixture CPU", "threads": 2},
    "libraries": {"backend": "oneDNN 3.0", "fmt": 90100},
}
with open(os.path.join(here, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")

with open(os.path.join(here, "config.toml"), "w") as f:
    f.write('# The configuration as run (fixture).\n[experiment]\nname = "fixture"\n\n[model]\n'
            'path = "/nonexistent/fixture.onnx"\n\n[output]\nroot = "results"\nworst = 3\nsaturate = 5.0\n')

with open(os.path.join(here, "additivity.csv"), "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow("config_index,low_bits,high_bits,num_low_layers,low_layers,predicted_degradation,"
               "measured_degradation,predicted_noise,measured_noise,measured_top1,ci_low,ci_high".split(","))
    for c in range(8):
        k = 1 + c % 5
        low = sorted(rng.sample(range(6), k))
        pd = sum(deg[(i, 4)] for i in low) + sum(deg[(i, 8)] for i in range(6) if i not in low)
        pn = sum(noise[(i, 4)] for i in low) + sum(noise[(i, 8)] for i in range(6) if i not in low)
        md = round(pd * 1.05 + rng.uniform(-0.3, 0.3), 1)
        mn = pn * (1 + rng.uniform(-0.05, 0.08))
        w.writerow([c, 4, 8, k, ";".join(map(str, low)), f"{pd:.4f}", f"{md:.4f}", f"{pn:.9g}", f"{mn:.9g}",
                    f"{float_top1 - md:.4f}", f"{md - 0.6:.4f}", f"{md + 0.6:.4f}"])

with open(os.path.join(here, "comparison.csv"), "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow("variant,description,top1,degradation,noise,ci_low,ci_high".split(","))
    w.writerow(["minmax", "all layers min/max at 4 bits", "87.1000", "4.2000", "0.151", "3.5000", "4.9000"])
    w.writerow(["sawb-global", "SAWB clipping on every layer", "88.0000", "3.3000", "0.122", "2.6000", "4.0000"])
    w.writerow(["sawb-conv1", "SAWB on /conv1/Conv only", "90.2000", "1.1000", "0.031", "0.5000", "1.7000"])

with open(os.path.join(here, "layers.csv"), "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow("layer_index,layer_name,op_type,weight_min,weight_max,range_min,range_max,clip_fraction,kurtosis,"
               "channel_range_spread".split(","))
    os.makedirs(os.path.join(here, "weights"), exist_ok=True)
    for i, n in enumerate(names):
        count = 288 if i < 5 else 320
        ws = [rng.gauss(0, 0.1) for _ in range(count)]
        if i == 0:
            ws[7], ws[100] = 0.92, -0.61  # outliers, as in the paper's Figure 6
        lo, hi = min(ws), max(ws)
        rlo, rhi = (min(lo, 0), max(hi, 0)) if i != 2 else (-0.25, 0.25)  # layer 2: clipped
        clip = sum(1 for x in ws if x < rlo or x > rhi) / count
        m = sum(ws) / count
        var = sum((x - m) ** 2 for x in ws) / count
        kurt = sum((x - m) ** 4 for x in ws) / count / var ** 2
        w.writerow([i, n, ops[i], f"{lo:.9g}", f"{hi:.9g}", f"{rlo:.9g}", f"{rhi:.9g}", f"{clip:.6f}", f"{kurt:.4f}",
                    "1.5"])
        if i in worst(3):
            with open(os.path.join(here, "weights", f"{i}.f32"), "wb") as g:
                g.write(struct.pack(f"<{count}f", *ws))
