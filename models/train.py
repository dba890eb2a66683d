#!/usr/bin/python3
"""Train a small Fashion-MNIST CNN for qsweep and export it to ONNX.

Usage (always use the Debian interpreter, it is the one that has torch):

    /usr/bin/python3 models/train.py --arch resnet      [--epochs E] [--seed S] [--out models/]
    /usr/bin/python3 models/train.py --arch mobilenetv2 [--epochs E] [--seed S] [--out models/]

For an architecture NAME (qsweep_resnet or qsweep_mobilenetv2) it writes into
--out:

    NAME.onnx        ONNX model, opset 13, input "input" (N,1,28,28) float32,
                     output "logits" (N,10), dynamic batch axis "N".
                     qsweep_resnet keeps its BatchNormalization nodes
                     (TrainingMode.PRESERVE, model in eval mode);
                     qsweep_mobilenetv2 uses the default eval export, so the
                     exporter folds BN into the preceding convs.
    NAME.golden.f32  PyTorch float32 logits of the FIRST 256 test images
                     (file order), raw little-endian float32, row-major 256x10.
    NAME.json        machine-readable model card.
    NAME.md          human-readable model card.

Data: the gzipped IDX files in /usr/share/datasets/fashion-mnist/ (read
directly with gzip + numpy).  Normalization, in float32, exactly:

    x = ((torch.from_numpy(u8).float() / 255.0) - 0.2860) / 0.3530

which a C++ program reproduces as (float(p)/255.0f - mean)/std.

Everything runs on the CPU with 2 threads; torch, numpy and random are seeded.
Results are reproducible on the same PyTorch build and CPU; other PyTorch
versions or CPUs (different kernels / SIMD paths) may give slightly different
weights, accuracies and therefore different ONNX files and golden logits.

After export the script checks the ONNX file (onnx.checker, shape inference,
allowed op set) and runs it through a tiny numpy reference interpreter
(see `numpy_run_onnx`) to make sure the exported graph reproduces the golden
logits.
"""

import argparse
import gzip
import hashlib
import json
import os
import random
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA_DIR = "/usr/share/datasets/fashion-mnist"
MEAN = 0.2860
STD = 0.3530
NUM_CLASSES = 10
GOLDEN_COUNT = 256
OPSET = 13
ALLOWED_OPS = {
    "Conv", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip", "Add",
    "GlobalAveragePool", "Flatten", "Reshape", "Identity", "Constant",
    "AveragePool", "MaxPool",
}


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

def read_idx(path):
    """Read a gzipped IDX file (ubyte data) into a numpy uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if (magic >> 8) != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path}: unexpected IDX magic {magic:#x}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: size mismatch {arr.size} vs {dims}")
    return arr.reshape(dims)


def normalize(u8):
    """uint8 (N,28,28) -> float32 (N,1,28,28), EXACTLY the documented formula."""
    x = ((torch.from_numpy(np.array(u8)).float() / 255.0) - MEAN) / STD
    return x.unsqueeze(1).contiguous()


def load_split(kind):
    prefix = "train" if kind == "train" else "t10k"
    images = read_idx(os.path.join(DATA_DIR, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(DATA_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
    assert images.shape[0] == labels.shape[0]
    return normalize(images), torch.from_numpy(labels.astype(np.int64))


def augment(x, gen, pad=2):
    """Random horizontal flip + random crop with `pad` pixels of padding.

    Padding uses the normalized value of a black pixel, so a padded border
    looks exactly like the (black) Fashion-MNIST background.
    """
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    bg = (0.0 - MEAN) / STD
    xp = F.pad(x, (pad, pad, pad, pad), value=bg)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (torch.arange(h)[None, :] + dy[:, None])  # (n,h)
    cols = (torch.arange(w)[None, :] + dx[:, None])  # (n,w)
    idx_n = torch.arange(n)[:, None, None]
    out = xp[idx_n, 0, rows[:, :, None], cols[:, None, :]]  # (n,h,w)
    return out.unsqueeze(1).contiguous()


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------

def conv3x3(cin, cout, stride=1, groups=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -> ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=False)
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
        else:
            self.downsample = None

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class QsweepResNet(nn.Module):
    """stem 1->16 s2 (28->14), blocks 16 (14x14), 32 (7x7), 64 (4x4), GAP, FC."""

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.conv1 = conv3x3(1, 16, stride=2)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class InvertedResidual(nn.Module):
    """[expand 1x1-BN-ReLU6] -> dw3x3-BN-ReLU6 -> project 1x1-BN (linear) [+x]."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [conv1x1(cin, hidden), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=False)]
        layers += [
            conv3x3(hidden, hidden, stride, groups=hidden), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=False),
            conv1x1(hidden, cout), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


class QsweepMobileNetV2(nn.Module):
    # (t, c, s): expansion, output channels, stride
    SETTINGS = [(1, 16, 1), (4, 24, 2), (4, 24, 1), (4, 32, 2), (4, 32, 1)]

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(conv3x3(1, 16, stride=2), nn.BatchNorm2d(16), nn.ReLU6(inplace=False))
        blocks, cin = [], 16
        for t, c, s in self.SETTINGS:
            blocks.append(InvertedResidual(cin, c, s, t))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(conv1x1(cin, 128), nn.BatchNorm2d(128), nn.ReLU6(inplace=False))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.flatten(self.avgpool(x)))


ARCHS = {
    "resnet": ("qsweep_resnet", QsweepResNet, False),          # (name, class, bn_folded)
    "mobilenetv2": ("qsweep_mobilenetv2", QsweepMobileNetV2, True),
}


def init_weights(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # zero-init the last BN of each residual branch: every block starts as identity
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def count_macs(model):
    """Multiply-accumulates per image of all Conv2d / Linear layers."""
    macs = []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            macs.append(out.numel() * k)
        else:
            macs.append(out.numel() * mod.in_features)

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    model.train(was_training)
    for h in hs:
        h.remove()
    return sum(macs)


# ----------------------------------------------------------------------------
# Training / evaluation
# ----------------------------------------------------------------------------

@torch.no_grad()
def predict(model, x, batch=1000):
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def train(model, xtr, ytr, xte, yte, epochs, seed, batch_size, lr, wd, log):
    gen = torch.Generator().manual_seed(seed)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": wd},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = xtr.shape[0] // batch_size  # drop the last partial batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
        pct_start=0.2, div_factor=20.0, final_div_factor=200.0)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(xtr.shape[0], generator=gen)
        tot_loss, tot_ok, seen = 0.0, 0, 0
        te = time.time()
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb = augment(xtr[idx], gen)
            yb = ytr[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * yb.shape[0]
            tot_ok += (out.argmax(1) == yb).sum().item()
            seen += yb.shape[0]
        acc = (predict(model, xte).argmax(1) == yte).float().mean().item() * 100
        log(f"epoch {ep + 1}/{epochs}: loss {tot_loss / seen:.4f} train-acc {100 * tot_ok / seen:.2f}% "
            f"test-acc {acc:.2f}% epoch {time.time() - te:.1f}s total {time.time() - t0:.1f}s")
    return time.time() - t0


# ----------------------------------------------------------------------------
# ONNX export and checks
# ----------------------------------------------------------------------------

def export_onnx(model, path, bn_folded):
    import onnx
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    kwargs = dict(
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )
    if bn_folded:
        kwargs["training"] = torch.onnx.TrainingMode.EVAL
        kwargs["do_constant_folding"] = True
    else:
        # PRESERVE + eval(): no eval-peephole pass, so no Conv+BN fusion; the
        # BN layers are exported as inference-mode BatchNormalization nodes.
        # (Constant folding has nothing to fold here; turning it off avoids
        # the exporter's "training-amenable mode" warning.)
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE
        kwargs["do_constant_folding"] = False
    torch.onnx.export(model, dummy, path, **kwargs)
    m = onnx.load(path)
    if inline_identity_initializers(m):
        onnx.save(m, path)
    onnx.checker.check_model(m)
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    ops = sorted({n.op_type for n in m.graph.node})
    bad = sorted(set(ops) - ALLOWED_OPS)
    if bad:
        raise RuntimeError(f"{path}: unsupported ONNX ops {bad}")
    has_bn = "BatchNormalization" in ops
    if has_bn == bn_folded:
        raise RuntimeError(f"{path}: BatchNormalization present={has_bn}, expected bn_folded={bn_folded}")
    return m, ops


def inline_identity_initializers(m):
    """Replace `Identity(initializer)` nodes by a copy of the initializer.

    The exporter de-duplicates bit-identical parameters and re-creates the
    duplicates with Identity nodes.  In qsweep_resnet the bias of bn2 and the
    bias of the downsample BN of a block are always identical (same zero init,
    same gradient, no weight decay), so their BatchNormalization nodes would
    read a bias produced by an Identity node instead of an initializer.
    Inlining keeps every BN/Conv/Gemm parameter a plain initializer.
    Returns the number of nodes removed.
    """
    from onnx import numpy_helper
    inits = {i.name: i for i in m.graph.initializer}
    keep, removed = [], 0
    for n in m.graph.node:
        if n.op_type == "Identity" and len(n.input) == 1 and n.input[0] in inits:
            t = numpy_helper.from_array(numpy_helper.to_array(inits[n.input[0]]).copy(), n.output[0])
            m.graph.initializer.append(t)
            inits[t.name] = t
            removed += 1
        else:
            keep.append(n)
    if removed:
        del m.graph.node[:]
        m.graph.node.extend(keep)
    return removed


def numpy_run_onnx(m, x):
    """Minimal numpy interpreter for the ALLOWED_OPS subset used by qsweep.

    Only meant as an independent check that the exported graph computes the
    same function as the PyTorch model (float64 accumulation).
    """
    from onnx import numpy_helper
    env = {init.name: numpy_helper.to_array(init).astype(np.float64)
           if numpy_helper.to_array(init).dtype.kind == "f" else numpy_helper.to_array(init)
           for init in m.graph.initializer}
    env[m.graph.input[0].name] = x.astype(np.float64)

    def attrs(node):
        from onnx import helper
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    for node in m.graph.node:
        a = attrs(node)
        ins = [env[i] if i else None for i in node.input]
        op = node.op_type
        if op == "Constant":
            y = numpy_helper.to_array(a["value"])
        elif op == "Conv":
            xx, w = ins[0], ins[1]
            b = ins[2] if len(ins) > 2 else None
            g = a.get("group", 1)
            s = a.get("strides", [1, 1])
            p = a.get("pads", [0, 0, 0, 0])
            d = a.get("dilations", [1, 1])
            assert d == [1, 1]
            n, c, h, wd = xx.shape
            oc, icg, kh, kw = w.shape
            xp = np.pad(xx, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
            oh = (h + p[0] + p[2] - kh) // s[0] + 1
            ow = (wd + p[1] + p[3] - kw) // s[1] + 1
            y = np.zeros((n, oc, oh, ow))
            ocg = oc // g
            for gi in range(g):
                xg = xp[:, gi * icg:(gi + 1) * icg]
                wg = w[gi * ocg:(gi + 1) * ocg]
                for i in range(kh):
                    for j in range(kw):
                        patch = xg[:, :, i:i + s[0] * (oh - 1) + 1:s[0], j:j + s[1] * (ow - 1) + 1:s[1]]
                        y[:, gi * ocg:(gi + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
            if b is not None:
                y += b[None, :, None, None]
        elif op == "BatchNormalization":
            xx, sc, bi, mu, var = ins
            eps = a.get("epsilon", 1e-5)
            sh = (1, -1, 1, 1)
            y = (xx - mu.reshape(sh)) / np.sqrt(var.reshape(sh) + eps) * sc.reshape(sh) + bi.reshape(sh)
        elif op == "Relu":
            y = np.maximum(ins[0], 0)
        elif op == "Clip":
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else -np.inf
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else np.inf
            y = np.clip(ins[0], lo, hi)
        elif op == "Add":
            y = ins[0] + ins[1]
        elif op == "GlobalAveragePool":
            y = ins[0].mean(axis=(2, 3), keepdims=True)
        elif op == "Flatten":
            ax = a.get("axis", 1)
            y = ins[0].reshape(int(np.prod(ins[0].shape[:ax])), -1)
        elif op == "Reshape":
            y = ins[0].reshape(ins[1])
        elif op == "Identity":
            y = ins[0]
        elif op == "Gemm":
            A, B = ins[0], ins[1]
            if a.get("transA", 0):
                A = A.T
            if a.get("transB", 0):
                B = B.T
            y = a.get("alpha", 1.0) * (A @ B)
            if len(ins) > 2 and ins[2] is not None:
                y = y + a.get("beta", 1.0) * ins[2]
        elif op == "MatMul":
            y = ins[0] @ ins[1]
        else:
            raise NotImplementedError(op)
        env[node.output[0]] = y
    return env[m.graph.output[0].name]


def describe_onnx(m):
    """Conv/Gemm nodes in graph order with their direct consumers; Clip encoding."""
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name for i in m.graph.initializer}
    const_out = {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    layers = []
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            cons = consumers.get(n.output[0], [])
            cons = [(c.name, c.op_type) for c in cons]
            if n.output[0] in {o.name for o in m.graph.output}:
                cons.append((n.output[0], "graph output"))
            layers.append((n.name, n.op_type, cons))
    clip_enc = set()
    for n in m.graph.node:
        if n.op_type == "Clip":
            for i in n.input[1:]:
                clip_enc.add("initializer" if i in inits else "Constant node" if i in const_out else "other")
            if any(a.name in ("min", "max") for a in n.attribute):
                clip_enc.add("attribute")
    return layers, sorted(clip_enc)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", required=True, choices=sorted(ARCHS))
    ap.add_argument("--epochs", type=int, default=None, help="default: 40 (resnet), 18 (mobilenetv2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="models/")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1, help="OneCycle max learning rate (SGD)")
    ap.add_argument("--wd", type=float, default=5e-4)
    args = ap.parse_args()
    default_epochs = {"resnet": 40, "mobilenetv2": 18}
    if args.epochs is None:
        args.epochs = default_epochs[args.arch]

    command = "/usr/bin/python3 " + shlex.join(sys.argv)
    name, cls, bn_folded = ARCHS[args.arch]
    os.makedirs(args.out, exist_ok=True)

    def log(msg):
        print(f"[{name}] {msg}", flush=True)

    torch.set_num_threads(2)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    xtr, ytr = load_split("train")
    xte, yte = load_split("test")
    log(f"train {tuple(xtr.shape)} test {tuple(xte.shape)}")

    model = cls()
    init_weights(model)
    n_params = sum(p.numel() for p in model.parameters())
    n_layers = sum(1 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    macs = count_macs(model)
    log(f"params {n_params}, conv+linear layers {n_layers}, MACs/image {macs}")

    train_seconds = train(model, xtr, ytr, xte, yte, args.epochs, args.seed,
                          args.batch_size, args.lr, args.wd, log)
    log(f"training took {train_seconds:.1f}s")

    model.eval()
    logits = predict(model, xte)
    correct = int((logits.argmax(1) == yte).sum().item())
    top1 = round(100.0 * correct / xte.shape[0], 2)
    log(f"final test top-1 {top1}% ({correct}/{xte.shape[0]})")

    # golden logits: first 256 test images in file order
    with torch.no_grad():
        golden = model(xte[:GOLDEN_COUNT]).numpy().astype("<f4")
    assert golden.shape == (GOLDEN_COUNT, NUM_CLASSES)
    golden_file = f"{name}.golden.f32"
    golden.tofile(os.path.join(args.out, golden_file))

    onnx_file = f"{name}.onnx"
    onnx_path = os.path.join(args.out, onnx_file)
    m, ops = export_onnx(model, onnx_path, bn_folded)
    digest = sha256_file(onnx_path)
    log(f"ONNX ops: {ops}")

    ref = numpy_run_onnx(m, xte[:GOLDEN_COUNT].numpy())
    max_diff = float(np.abs(ref - golden.astype(np.float64)).max())
    agree = int((ref.argmax(1) == golden.argmax(1)).sum())
    log(f"numpy ONNX interpreter vs golden: max |diff| {max_diff:.3e}, argmax agree {agree}/{GOLDEN_COUNT}")
    if max_diff > 1e-3 or agree != GOLDEN_COUNT:
        raise RuntimeError("exported ONNX does not reproduce the PyTorch logits")
    layers, clip_enc = describe_onnx(m)
    for lname, lop, cons in layers:
        log(f"  {lop:4s} {lname} -> {', '.join(f'{c[1]}({c[0]})' for c in cons)}")

    card = {
        "name": name,
        "arch": args.arch,
        "onnx": onnx_file,
        "sha256": digest,
        "onnx_bytes": os.path.getsize(onnx_path),
        "opset": OPSET,
        "onnx_ops": ops,
        "test_top1": top1,
        "test_correct": correct,
        "test_count": int(xte.shape[0]),
        "golden": golden_file,
        "golden_count": GOLDEN_COUNT,
        "golden_format": "raw little-endian float32, row-major (golden_count x num_classes)",
        "golden_onnx_numpy_max_abs_diff": max_diff,
        "num_classes": NUM_CLASSES,
        "input_name": "input",
        "output_name": "logits",
        "input_shape": [1, 28, 28],
        "mean": [MEAN],
        "std": [STD],
        "normalization": "x = (float(p)/255.0f - mean)/std, float32",
        "bn_folded": bn_folded,
        "params": n_params,
        "conv_linear_layers": n_layers,
        "macs_per_image": macs,
        "weighted_layers": [{"name": l[0], "op": l[1], "consumers": [c[0] for c in l[2]],
                             "consumer_ops": [c[1] for c in l[2]]} for l in layers],
        "clip_bounds_encoding": clip_enc,
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "optimizer": f"SGD nesterov momentum 0.9, OneCycle max_lr {args.lr}, weight_decay {args.wd} (not on BN/bias)",
        "augmentation": "random horizontal flip, random crop 28x28 from 2-pixel padded image",
        "train_seconds": round(train_seconds, 1),
        "torch_version": torch.__version__,
        "onnx_version": __import__("onnx").__version__,
        "command": command,
    }
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")

    arch_text = {
        "resnet": (
            "Stem Conv3x3 1->16 stride 2 (28->14) + BN + ReLU; BasicBlock 16->16 (stride 1, 14x14); "
            "BasicBlock 16->32 (stride 2, 7x7, 1x1 conv + BN downsample shortcut); "
            "BasicBlock 32->64 (stride 2, 4x4, 1x1 conv + BN downsample shortcut); "
            "GlobalAveragePool -> Flatten -> Linear 64->10. "
            "BasicBlock = conv3x3-BN-ReLU-conv3x3-BN, Add shortcut, ReLU after the Add. Convs have no bias."),
        "mobilenetv2": (
            "Stem Conv3x3 1->16 stride 2 (28->14) + BN + ReLU6; inverted residual blocks (t,c,s) = "
            + ", ".join(f"({t},{c},{s})" for t, c, s in QsweepMobileNetV2.SETTINGS)
            + " [expand 1x1 conv+BN+ReLU6 (omitted when t=1), depthwise 3x3 conv+BN+ReLU6, "
            "project 1x1 conv+BN (linear), residual Add when stride 1 and in==out]; "
            "head 1x1 conv 32->128 + BN + ReLU6; GlobalAveragePool -> Flatten -> Linear 128->10. "
            "ReLU6 exports as Clip(0, 6)."),
    }[args.arch]
    layer_lines = "\n".join(
        f"| {i} | `{l[0]}` | {l[1]} | " + ", ".join(f"{c[1]} `{c[0]}`" for c in l[2]) + " |"
        for i, l in enumerate(layers))
    md = f"""# {name}

Small Fashion-MNIST classifier for qsweep (layer-wise quantization analysis).

## Architecture

{arch_text}

- Weighted layers (Conv2d + Linear): {n_layers}
- Parameters: {n_params}
- MACs per image (conv + linear): {macs}

## Result

- Test top-1 (full 10,000-image test set, final PyTorch eval model): **{top1:.2f}%** ({correct}/10000)
- Training wall time: {train_seconds:.1f} s (2 CPU threads, machine shared with other work)
- Epochs: {args.epochs}, seed: {args.seed}, batch size {args.batch_size}
- Optimizer: {card["optimizer"]}
- Augmentation: {card["augmentation"]}
- torch {torch.__version__}, onnx {card["onnx_version"]}

## Files

| file | content |
|------|---------|
| `{onnx_file}` | ONNX opset {OPSET}, input `input` (N,1,28,28) float32, output `logits` (N,10); sha256 `{digest}` ({card["onnx_bytes"]} bytes) |
| `{golden_file}` | PyTorch float32 logits of the first {GOLDEN_COUNT} test images (file order), raw little-endian float32, row-major {GOLDEN_COUNT}x{NUM_CLASSES} |
| `{name}.json` | machine-readable version of this card |

- BatchNorm folded into the convs in the ONNX: **{"yes" if bn_folded else "no (BatchNormalization nodes kept)"}**
- ONNX op types: {", ".join(ops)}
- Clip min/max encoding: {", ".join(clip_enc) if clip_enc else "n/a (no Clip)"}
- A small numpy interpreter of the exported graph reproduces the golden logits
  with max |diff| {max_diff:.2e} (argmax agrees on {agree}/{GOLDEN_COUNT}).

## Input normalization

Single channel, mean {MEAN:.4f}, std {STD:.4f}, computed in float32 as
`((torch.from_numpy(u8).float() / 255.0) - {MEAN:.4f}) / {STD:.4f}`,
i.e. `(float(p)/255.0f - mean)/std` in C++.

## Weighted layers in ONNX graph order (and their direct consumers)

| # | node | op | consumed by |
|---|------|----|-------------|
{layer_lines}

## Reproduce

```
{command}
```

Reproducible only up to PyTorch version / CPU differences (kernel and SIMD
paths change float rounding, which changes the trained weights).
"""
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(md)
    log(f"wrote {onnx_file} ({card['onnx_bytes']} bytes, sha256 {digest}), {golden_file}, {name}.json, {name}.md")


if __name__ == "__main__":
    main()
