"""Benchmark: how fast a decompression bomb is refused, against decoding one real catalog photo.

    .venv/bin/python benchmarks/bomb_refusal.py [--source-dir ../shared/data/fashion-products]

Builds PNG bombs (valid, all-black greyscale PNGs that claim 64M, 400M and 3.6G pixels in a few
hundred KB to 3.5 MB) and times ``decode_image`` refusing each, then times decoding the first
catalog photo to the model size. Prints both and their ratio. Nothing is written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lookalike.image_corpus import png_bomb
from lookalike.images import ImageDecodeError, decode_image

REPEATS = 50


def seconds_per_call(function, *args) -> float:
    """Mean wall time of one call over ``REPEATS`` calls."""
    start = time.perf_counter()
    for _ in range(REPEATS):
        function(*args)
    return (time.perf_counter() - start) / REPEATS


def refuse(content: bytes, size: int) -> None:
    """Decode a bomb; it must be refused."""
    try:
        decode_image(content, size)
    except ImageDecodeError:
        return
    raise AssertionError("a decompression bomb was decoded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-dir", default="../shared/data/fashion-products")
    parser.add_argument("--size", type=int, default=64, help="model input side in pixels")
    args = parser.parse_args()
    photo = sorted((Path(args.source_dir) / "images").glob("*.jpg"))[0].read_bytes()
    decode_s = seconds_per_call(decode_image, photo, args.size)
    print(f"decode one catalog photo ({len(photo):,} bytes): {decode_s * 1000:.2f} ms")
    for side in (8_000, 20_000, 60_000):
        bomb = png_bomb(side, side)
        refuse_s = seconds_per_call(refuse, bomb, args.size)
        print(
            f"refuse a {side}x{side} bomb ({len(bomb):,} bytes, {side * side / 1e6:,.0f}M pixels): "
            f"{refuse_s * 1000:.2f} ms = {refuse_s / decode_s:.2f} x one photo's decode"
        )


if __name__ == "__main__":
    main()
