#!/usr/bin/env python3
"""Writes tests/data/png/ (PNG files of every colour type and bit depth, interlaced and not,
with and without transparency) and tests/data/png_pillow.json: what Pillow makes of each.

    /usr/bin/python3 tests/data/make_png_golden.py     # python3-pil

Most files are written by the small encoder below (any colour type and depth, Adam7, tRNS;
filter type 0); a few by Pillow itself (adaptive filters). The JSON holds per file either
  rgb:  Image.open(f).convert("RGB") as hex bytes (H, W, 3), with width and height, and
  gray: .convert("RGB").convert("L") as hex (transforms.Grayscale() of the loaded image),
or refused: true for a file qsweep must refuse with one sentence (16-bit grayscale, which
Pillow reads as 32-bit integers and clips to 255 in convert("RGB"); a truncated file).
tests/runtime/image_test.cpp compares qsweep's decoder with it, byte for byte.
"""
import io
import json
import os
import random
import shutil
import struct
import zlib

from PIL import Image

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "png")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
rng = random.Random(11)

CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pack(samples, depth):
    if depth == 16:
        return b"".join(struct.pack(">H", s) for s in samples)
    if depth == 8:
        return bytes(samples)
    out, acc, bits = bytearray(), 0, 0
    for s in samples:
        acc, bits = (acc << depth) | s, bits + depth
        if bits == 8:
            out.append(acc)
            acc = bits = 0
    if bits:
        out.append(acc << (8 - bits))
    return bytes(out)


def encode(w, h, ctype, depth, rows, palette=None, trns=None, interlace=0):
    ch = CHANNELS[ctype]
    raw = b""
    if interlace:
        for x0, y0, dx, dy in ADAM7:
            xs, ys = range(x0, w, dx), range(y0, h, dy)
            if not xs or not ys:
                continue
            for y in ys:
                raw += b"\0" + pack([s for x in xs for s in rows[y][x * ch:(x + 1) * ch]], depth)
    else:
        for r in rows:
            raw += b"\0" + pack(r, depth)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
    if palette:
        data += chunk(b"PLTE", bytes(v for rgb in palette for v in rgb))
    if trns is not None:
        data += chunk(b"tRNS", trns)
    return data + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def random_rows(w, h, ctype, depth, top=None):
    top = (1 << depth) - 1 if top is None else top
    return [[rng.randint(0, top) for _ in range(w * CHANNELS[ctype])] for _ in range(h)]


files = {}


def synth(name, w, h, ctype, depth, palette_size=0, trns=None, interlace=0):
    palette = [[rng.randint(0, 255) for _ in range(3)] for _ in range(palette_size)] if palette_size else None
    rows = random_rows(w, h, ctype, depth, top=palette_size - 1 if palette_size else None)
    files[name] = encode(w, h, ctype, depth, rows, palette, trns, interlace)


synth("gray1.png", 11, 3, 0, 1)
synth("gray2.png", 9, 4, 0, 2)
synth("gray4.png", 7, 5, 0, 4)
synth("gray8.png", 6, 5, 0, 8)
synth("gray8_trns.png", 6, 4, 0, 8, trns=struct.pack(">H", 7))
synth("gray_alpha8.png", 5, 6, 4, 8)
synth("gray_alpha16.png", 4, 3, 4, 16)
synth("rgb8.png", 7, 6, 2, 8)
synth("rgb8_trns.png", 5, 5, 2, 8, trns=struct.pack(">HHH", 1, 2, 3))
synth("rgb16.png", 5, 4, 2, 16)
synth("rgba8.png", 6, 7, 6, 8)
synth("rgba16.png", 4, 4, 6, 16)
synth("palette1.png", 13, 3, 3, 1, palette_size=2)
synth("palette4.png", 7, 4, 3, 4, palette_size=11)
synth("palette8_trns.png", 8, 5, 3, 8, palette_size=200, trns=bytes(range(0, 200, 3)))
synth("rgb8_adam7.png", 13, 11, 2, 8, interlace=1)    # every pass non-empty
synth("gray2_adam7.png", 3, 2, 0, 2, interlace=1)     # some passes empty
synth("rgba16_adam7.png", 9, 9, 6, 16, interlace=1)
synth("gray16.png", 4, 3, 0, 16)                       # refused

# Pillow's own encoder: adaptive filters.
img = Image.new("RGB", (17, 9))
img.putdata([(rng.randint(0, 255), (x * 13) % 256, (y * 29) % 256) for y in range(9) for x in range(17)])
buf = io.BytesIO()
img.save(buf, "PNG", optimize=True)
files["pillow_rgb.png"] = buf.getvalue()
buf = io.BytesIO()
img.quantize(colors=16).save(buf, "PNG")
files["pillow_palette.png"] = buf.getvalue()
files["png_named.jpg"] = files["rgb8.png"]                     # read by its content, as Pillow does
files["truncated.png"] = files["rgb8_adam7.png"][:-40]         # refused


def with_chunk_crc_flipped(data, kind):
    at = data.index(kind) - 4
    length = struct.unpack(">I", data[at:at + 4])[0]
    crc = at + 8 + length
    return data[:crc] + bytes([data[crc] ^ 0xFF]) + data[crc + 1:]


# Damage Pillow reads past (what it does not check) and damage it refuses: the golden says which.
files["no_iend.png"] = files["gray8.png"][:-12]                 # IEND missing: Pillow reads it
files["no_idat_crc.png"] = files["gray8.png"][:-16]             # and the last IDAT's CRC
files["no_adler.png"] = files["gray8.png"][:-20]                # and the zlib stream's checksum
files["idat_crc.png"] = with_chunk_crc_flipped(files["rgb8.png"], b"IDAT")   # Pillow reads it
text = chunk(b"tEXt", b"Comment\0hello")
plain = files["rgba8.png"]
files["text_crc.png"] = with_chunk_crc_flipped(plain[:33] + text + plain[33:], b"tEXt")  # before IDAT
files["ihdr_crc.png"] = with_chunk_crc_flipped(files["rgb8.png"], b"IHDR")
files["plte_crc.png"] = with_chunk_crc_flipped(files["palette4.png"], b"PLTE")
files["text_after_idat_crc.png"] = with_chunk_crc_flipped(plain[:-12] + text + plain[-12:], b"tEXt")

golden = {}
for name, data in sorted(files.items()):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    if name == "gray16.png":  # refused by qsweep on purpose (see above)
        golden[name] = {"refused": True}
        continue
    try:
        im = Image.open(io.BytesIO(data))
        rgb = im.convert("RGB")
    except Exception as e:  # what Pillow refuses, qsweep must refuse too
        golden[name] = {"refused": True, "pillow": type(e).__name__}
        continue
    golden[name] = {"mode": im.mode, "width": rgb.width, "height": rgb.height,
                    "rgb": rgb.tobytes().hex(), "gray": rgb.convert("L").tobytes().hex()}

with open(os.path.join(here, "png_pillow.json"), "w") as f:
    json.dump({"pillow": Image.__version__, "files": golden}, f, indent=1, sort_keys=True)
    f.write("\n")
print(f"wrote {len(files)} files to {out} and png_pillow.json (Pillow {Image.__version__})")
