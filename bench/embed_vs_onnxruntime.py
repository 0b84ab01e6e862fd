"""Embedding throughput: milkglass (Rust, ONNX Runtime loaded at run time) against the same model run with
the onnxruntime Python package, on the same images and boxes, in the same run.

    python3 bench/embed_vs_onnxruntime.py [--images 256] [--batch 32]

The Rust side (crates/milkglass-embed/benches/embed.rs) renders the sample images, writes them to a
folder, and times decode + resample + inference. This script then embeds those files with onnxruntime,
decoding with Pillow and resizing with Pillow's bilinear filter (the usual Python pipeline), and prints
both and the ratio.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIDE = 224


def square(image, box=None):
    if box is not None:
        left, top, width, height = box
        image = image.crop((max(0, left), max(0, top), min(image.width, left + width), min(image.height, top + height)))
    return np.asarray(image.resize((SIDE, SIDE), Image.BILINEAR), dtype=np.uint8)


def embed(session, squares, batch):
    out = []
    for i in range(0, len(squares), batch):
        out.append(session.run(None, {"image": np.stack(squares[i:i + batch])})[0])
    return np.concatenate(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="milkglass-embed-bench-")
    rust = subprocess.run(
        ["cargo", "bench", "-q", "-p", "milkglass-embed", "--bench", "embed", "--",
         "--images", str(args.images), "--batch", str(args.batch), "--dir", folder],
        cwd=ROOT, check=True, capture_output=True, text=True)
    ours = json.loads(rust.stdout.strip().splitlines()[-1])

    model = os.environ.get("MILKGLASS_EMBED_MODEL",
                           os.path.expanduser("~/.cache/milkglass/models/sscd_distilled.onnx"))
    session = ort.InferenceSession(model, providers=ort.get_available_providers())
    files = sorted(pathlib.Path(folder).glob("*.png"))
    boxes = json.loads((pathlib.Path(folder) / "boxes.json").read_text())
    embed(session, [square(Image.open(f).convert("RGB")) for f in files[:args.batch]], args.batch)  # warm up

    started = time.perf_counter()
    embed(session, [square(Image.open(f).convert("RGB")) for f in files], args.batch)
    frame_secs = time.perf_counter() - started

    started = time.perf_counter()
    squares = []
    for f, frame_boxes in zip(files, boxes):
        image = Image.open(f).convert("RGB")
        squares.append(square(image))
        squares.extend(square(image, b) for b in frame_boxes)
    embed(session, squares, args.batch)
    crop_secs = time.perf_counter() - started

    peer = {"frames_per_s": len(files) / frame_secs, "crop_pass_squares_per_s": len(squares) / crop_secs}
    print(f"machine: {os.cpu_count()} cores; {args.images} images of {ours['size'][0]}x{ours['size'][1]}, "
          f"{ours['crops']} label boxes, batch {args.batch}, providers {session.get_providers()}")
    print(f"{'':28}{'milkglass':>12}{'onnxruntime':>14}{'ratio':>8}")
    for key, label in [("frames_per_s", "frames / s"), ("crop_pass_squares_per_s", "frames + crops / s")]:
        print(f"{label:28}{ours[key]:>12.1f}{peer[key]:>14.1f}{ours[key] / peer[key]:>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
