"""The demo behind `make demo`: build a small photo collection, index it, search it.

The photos are scikit-image's bundled real photographs plus edited copies of them (crops,
rotations, colour changes, a watermark, heavy JPEG), so the demo needs no network and no data
beyond the installed packages. It runs the real command line and writes a result grid.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from lookalike.images import bundled_photo

PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "retina",
    "coins",
    "horse",
    "camera",
    "moon",
    "page",
    "text",
]


def edits(image: Image.Image) -> dict[str, Image.Image]:
    """A few of the edits a copied picture goes through."""
    w, h = image.size
    marked = image.copy()
    ImageDraw.Draw(marked).text((w // 10, h // 2), "© lookalike demo", fill=(255, 255, 255))
    return {
        "crop": image.crop((w // 8, h // 8, w - w // 6, h - h // 5)),
        "rotated": image.rotate(12, expand=True, fillcolor=(0, 0, 0)),
        "vivid": ImageEnhance.Color(ImageEnhance.Contrast(image).enhance(1.3)).enhance(1.6),
        "mirrored": ImageOps.mirror(image),
        "watermarked": marked,
    }


def build(folder: Path) -> list[Path]:
    """Write originals and edited copies; return held-out queries (edits not indexed)."""
    folder.mkdir(parents=True, exist_ok=True)
    queries_dir = folder.parent / "queries"
    queries_dir.mkdir(exist_ok=True)
    queries = []
    for i, name in enumerate(PHOTOS):
        original = bundled_photo(name)
        original.save(folder / f"{name}.jpg", quality=90)
        variants = edits(original)
        # Two edits go into the collection, one is kept back as a query.
        for kind in list(variants)[i % 5 : i % 5 + 2]:
            variants[kind].save(folder / f"{name}_{kind}.jpg", quality=85)
        held_out = list(variants)[(i + 3) % 5]
        query = queries_dir / f"{name}_{held_out}_q.jpg"
        variants[held_out].save(query, quality=35)  # heavy re-encoding too
        queries.append(query)
    return queries


def lookalike(*args: str) -> None:
    print(f"\n$ lookalike {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "lookalike", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    args = parser.parse_args()
    out: Path = args.out
    shutil.rmtree(out / "collection", ignore_errors=True)
    queries = build(out / "photos")
    collection = str(out / "collection")
    lookalike("index", str(out / "photos"), "--collection", collection)
    lookalike("index", str(out / "photos"), "--collection", collection)  # incremental: no work
    picks = [str(q) for q in queries[:4]]
    lookalike(
        "search", *picks, "--collection", collection, "-k", "4", "--grid", str(out / "grid.png")
    )
    lookalike("search", picks[0], "--collection", collection, "-k", "3", "--json")
    lookalike(
        "search",
        "--text",
        "a cat",
        "--text",
        "a cup of coffee",
        "--collection",
        collection,
        "-k",
        "3",
    )
    lookalike("info", "--collection", collection)
    print(f"\nResult grid: {out / 'grid.png'}")


if __name__ == "__main__":
    main()
