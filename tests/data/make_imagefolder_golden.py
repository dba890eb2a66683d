#!/usr/bin/env python3
"""Writes tests/data/imagefolder/ (a small ImageFolder of JPEG files) and
tests/data/imagefolder_torchvision.json: what PIL and torchvision make of it.

    /usr/bin/python3 tests/data/make_imagefolder_golden.py     # python3-torchvision, python3-pil

The JSON holds, for the split "val":
  files:    ImageFolder's samples in order, as paths relative to the split, with labels
  decoded:  per file, Image.open(f).convert("RGB") as hex bytes (H, W, 3) and its size
  cases:    per transform set, per file, the uint8 image after
            [Grayscale()], Resize(r), CenterCrop(c) (before ToTensor) as hex
  normalized: the first file through the first case's transforms + ToTensor + Normalize,
            float32 values (exact decimal of each)
tests/runtime/image_test.cpp compares qsweep's reader with all of it, byte for byte.
"""
import json
import os
import shutil

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "imagefolder")
split = os.path.join(root, "val")
shutil.rmtree(root, ignore_errors=True)

rng = np.random.default_rng(7)


def picture(w, h, channels):
    # Smooth gradients plus noise: edges and texture for the resampler, JPEG-friendly.
    y, x = np.mgrid[0:h, 0:w]
    planes = []
    for c in range(channels):
        base = 127 + 90 * np.sin(x / (3.0 + c) + y / (5.0 + 2 * c)) + rng.normal(0, 20, (h, w))
        planes.append(np.clip(base, 0, 255).astype(np.uint8))
    return np.stack(planes, axis=-1) if channels > 1 else planes[0]


def save(rel, w, h, mode, **kw):
    path = os.path.join(split, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == "RGB":
        img = Image.fromarray(picture(w, h, 3), "RGB")
    elif mode == "L":
        img = Image.fromarray(picture(w, h, 1), "L")
    else:  # CMYK
        img = Image.fromarray(picture(w, h, 4), "CMYK")
    img.save(path, "JPEG", **kw)


# Classes sorted by name: ant (0), bee (1), cat (2). Sizes chosen so that the resizes below
# both shrink and enlarge, and the centre crops hit half-pixel offsets (rounded half to even).
save("ant/b.jpg", 37, 29, "RGB", quality=90)
save("ant/a.JPEG", 29, 37, "RGB", quality=75, subsampling=0)   # 4:4:4, upper-case extension
with open(os.path.join(split, "ant", "notes.txt"), "w") as f:
    f.write("not an image: ImageFolder skips it\n")
save("bee/gray.jpg", 26, 26, "L", quality=85)
save("bee/sub/deep.jpg", 41, 23, "RGB", quality=95, progressive=True)
save("bee/sub2/x.jpeg", 30, 30, "RGB", quality=60)
save("cat/cmyk.jpg", 33, 27, "CMYK", quality=90)
save("cat/wide.jpg", 48, 17, "RGB", quality=80, subsampling=1)  # 4:2:2
# sorted(os.walk()) orders folders by their whole path: bee/sub, bee/sub-a, bee/sub/z, bee/sub2
# ('-' < '/' < '2'), not depth first (bee/sub, bee/sub/z, bee/sub-a, ...).
save("bee/sub/z/n.jpg", 25, 31, "RGB", quality=88)
save("bee/sub-a/m.jpg", 31, 25, "RGB", quality=88)

dataset = torchvision.datasets.ImageFolder(split)
files = [(os.path.relpath(p, split), label) for p, label in dataset.samples]

decoded = []
for p, _ in dataset.samples:
    img = Image.open(p).convert("RGB")
    decoded.append({"width": img.width, "height": img.height, "hex": np.asarray(img).tobytes().hex()})

cases = []
for channels, resize, crop in ((3, 24, 20), (3, 25, 20), (1, 25, 20), (3, 0, 48), (1, 31, 0)):
    steps = [transforms.Grayscale()] if channels == 1 else []
    if resize:
        steps.append(transforms.Resize(resize))
    if crop:
        steps.append(transforms.CenterCrop(crop))
    t = transforms.Compose(steps)
    images = []
    for p, _ in dataset.samples:
        out = t(Image.open(p).convert("RGB"))
        images.append({"width": out.width, "height": out.height, "hex": np.asarray(out).tobytes().hex()})
    cases.append({"channels": channels, "resize": resize, "crop": crop, "images": images})

mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
full = transforms.Compose([transforms.Resize(24), transforms.CenterCrop(20), transforms.ToTensor(),
                           transforms.Normalize(mean, std)])
x = full(Image.open(dataset.samples[0][0]).convert("RGB"))
assert x.dtype == torch.float32
normalized = {"mean": mean, "std": std, "shape": list(x.shape),
              "values": [float(v) for v in x.flatten().tolist()]}

golden = {"generator": "tests/data/make_imagefolder_golden.py",
          "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                       "pillow": Image.__version__},
          "classes": dataset.classes, "files": [{"path": p, "label": l} for p, l in files],
          "decoded": decoded, "cases": cases, "normalized": normalized}
with open(os.path.join(here, "imagefolder_torchvision.json"), "w") as f:
    json.dump(golden, f, indent=1)
print(f"{len(files)} images in {split}; cases: {len(cases)}")
