#!/usr/bin/python3
"""Exports torchvision's ResNet-18 (ImageNet shape: 3x224x224 in, 1000 logits out) to ONNX, with
weights drawn by torch.manual_seed(0) (no download): a large network for the GPU benchmark,
whose numbers (not its accuracy) matter. Input "input" and output "logits", the batch axis
dynamic ("batch"); checked with onnx.checker.

  python3 bench/export_resnet18.py [--out bench/resnet18.onnx] [--opset 13]

Runs with Debian 12's python3-torch 1.13 + python3-torchvision and with torch 2.x (the classic
TorchScript exporter is asked for where torch.onnx.export takes `dynamo`).
"""
import argparse
import inspect
import os
import sys

import onnx
import torch
import torchvision


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet18.onnx"))
    ap.add_argument("--opset", type=int, default=13, choices=range(13, 18), metavar="13..17")
    args = ap.parse_args()

    torch.manual_seed(0)
    try:
        model = torchvision.models.resnet18(weights=None)
    except TypeError:  # torchvision < 0.13
        model = torchvision.models.resnet18(pretrained=False)
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    kwargs = dict(input_names=["input"], output_names=["logits"], opset_version=args.opset,
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters
    if has_dynamo:
        kwargs["dynamo"] = False  # torch >= 2.9 defaults to the dynamo exporter
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with torch.no_grad():
        try:
            torch.onnx.export(model, x, args.out, **kwargs)
        except Exception as e:  # a torch without the classic exporter: the dynamo one, same opset asked
            if not has_dynamo:
                raise
            print(f"export_resnet18.py: the classic exporter failed ({e}); trying dynamo=True", file=sys.stderr)
            kwargs["dynamo"] = True
            torch.onnx.export(model, (x,), args.out, **kwargs)
    onnx.checker.check_model(onnx.load(args.out))
    print(f"{args.out}: {os.path.getsize(args.out)} bytes (torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, opset {args.opset})")


if __name__ == "__main__":
    main()
