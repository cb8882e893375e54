"""The DISC21-hard set of ``benchmarks/copies_hard.py``: references, distractors, queries.

Everything comes from ``../shared/datasets`` (Corel-1k, Tiny ImageNet val, UKBench sample, the
gopro-walk video) and AugLy edits, drawn from one seeded generator, so the same flags give the
same set on every machine. References are *recipes* (a file, a video frame, an upscaled Tiny
ImageNet image, a 2x2 collage of Tiny ImageNet images) decoded on demand; only the edited queries
are written to disk (``bench-out/copies_hard/<set>/queries``), with ``set.json`` describing all.

Pools are disjoint: images that are indexed, images whose edits are negatives (never indexed),
donors pasted into overlay queries (never indexed), the background pool for score
normalisation (never indexed, never queried), and the tiles of the collage distractors.
"""

from __future__ import annotations

import json
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "bench-out" / "copies_hard"
FRAMES = OUT / "frames"
SEED = 2117

#: Sizes of the two sets. ``pos``/``neg``: test queries per kind; ``calib_*``: the separate
#: split the calibrated score is fitted on; ``bg``: the normalisation background pool.
SIZES = {
    "full": {"refs": 20_000, "pos": 600, "neg": 600, "calib_pos": 200, "calib_neg": 200},
    "small": {"refs": 2_000, "pos": 150, "neg": 150, "calib_pos": 60, "calib_neg": 60},
}
#: Share of the positive (and negative) queries in each tier.
TIERS = {"ordinary": 0.34, "hard-crop": 0.25, "overlay": 0.25, "heavy": 0.16}
#: Share of the negatives that are near-misses (another photo of the indexed scene/object).
NEAR_MISS = 0.06
#: gopro-walk: frames indexed every FRAME_STEP (2.5 s of walking: the whole clip looks alike,
#: SSCD cosine 0.62 at 2 s, so denser frames would all be near-duplicates of each other);
#: near-miss frames sit FRAME_OFFSETS after an indexed one (SSCD cosine ~0.86 at 20 frames).
FRAME_STEP = 75
FRAME_OFFSETS_TEST = (20, 55)
FRAME_OFFSETS_CALIB = (25, 50)
FRAME_DONOR_OFFSETS = (37,)


# --------------------------------------------------------------------------------------------
# sources and recipes
# --------------------------------------------------------------------------------------------


def extract_frames() -> list[Path]:
    """Every frame of gopro-walk as a JPEG (cached)."""
    frames = sorted(FRAMES.glob("f*.jpg"))
    if len(frames) >= 300:
        return frames
    import av

    FRAMES.mkdir(parents=True, exist_ok=True)
    with av.open(str(SHARED / "gopro-walk" / "max-heromode.mp4")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            frame.to_image().save(FRAMES / f"f{i:04d}.jpg", quality=92)
    return sorted(FRAMES.glob("f*.jpg"))


def load(recipe: list) -> Image.Image:
    """The RGB image a recipe describes."""
    kind = recipe[0]
    if kind == "file":
        return Image.open(recipe[1]).convert("RGB")
    if kind == "tiny":  # a 64x64 Tiny ImageNet image upscaled to a side of 256-320
        side = recipe[2]
        return Image.open(recipe[1]).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    if kind == "mosaic":  # a 2x2 collage of Tiny ImageNet images, upscaled
        canvas = Image.new("RGB", (128, 128))
        for i, path in enumerate(recipe[1]):
            canvas.paste(Image.open(path).convert("RGB"), ((i % 2) * 64, (i // 2) * 64))
        side = recipe[2]
        return canvas.resize((side, side), Image.Resampling.BICUBIC)
    raise ValueError(f"unknown recipe {recipe!r}")


def _pools(rng: random.Random) -> dict:
    tiny = sorted(str(p) for p in (SHARED / "tiny-imagenet-val").glob("*/*.JPEG"))
    corel = sorted(str(p) for p in (SHARED / "corel1k").glob("*/*.jpg"))
    ukb = sorted(str(p) for p in (SHARED / "ukbench-sample").glob("*.jpg"))
    frames = [str(p) for p in extract_frames()]
    rng.shuffle(tiny)
    rng.shuffle(corel)
    objects: dict[int, list[str]] = {}
    for path in ukb:
        objects.setdefault(int(Path(path).stem[-5:]) // 4, []).append(path)
    ukb_indexed, ukb_near = [], []
    for views in objects.values():
        chosen = rng.sample(views, 2)[:1]  # one view indexed, the other three near-misses
        ukb_indexed += chosen
        ukb_near += [v for v in views if v not in chosen]
    indexed_frames = list(range(0, len(frames), FRAME_STEP))
    return {
        "tiny_bg": tiny[:1000],
        "tiny_held": tiny[1000:2000],
        "tiny_tiles": tiny[2000:3500],
        "tiny_index": tiny[3500:],
        "corel_bg": corel[:150],
        "corel_held": corel[150:400],
        "corel_index": corel[400:],
        "ukb_index": ukb_indexed,
        "ukb_near": ukb_near,
        "frames": frames,
        "frame_index": indexed_frames,
    }


def _tiny(rng: random.Random, path: str) -> list:
    return ["tiny", path, rng.randint(256, 320)]


# --------------------------------------------------------------------------------------------
# edits (AugLy, plus two it lacks on this Pillow/NumPy: perspective and a caption bar)
# --------------------------------------------------------------------------------------------

_AUGLY = None


def _augly():
    global _AUGLY
    if _AUGLY is None:
        warnings.filterwarnings("ignore", module="augly")
        import augly.image as imaugs
        import augly.utils as utils

        emojis = sorted(Path(utils.EMOJI_DIR).rglob("*.png"))
        fonts = [
            Path(utils.FONTS_DIR) / f"{name}.ttf"
            for name in ("Chunkfive", "CaviarDreams", "Elsie-Black", "DancingScript-Regular")
        ]
        glyphs = {f: len(pickle.loads(f.with_suffix(".pkl").read_bytes())) for f in fonts}
        templates = sorted(Path(utils.SCREENSHOT_TEMPLATES_DIR).glob("*.png"))
        _AUGLY = (imaugs, emojis, glyphs, templates, Path(utils.SCREENSHOT_TEMPLATES_DIR))
    return _AUGLY


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))


def crop_area(im: Image.Image, rng: random.Random, lo: float, hi: float) -> Image.Image:
    """A random crop keeping a share of the area in [lo, hi], aspect within 1:2..2:1."""
    w, h = im.size
    area = rng.uniform(lo, hi)
    for _ in range(20):
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        cw = round((area * w * h * aspect) ** 0.5)
        ch = round((area * w * h / aspect) ** 0.5)
        if 8 <= cw <= w and 8 <= ch <= h:
            break
    else:
        cw, ch = round(w * area**0.5), round(h * area**0.5)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((x, y, x + cw, y + ch))


def perspective(im: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    import cv2

    w, h = im.size
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = src + np.float32(
        [[rng.uniform(-1, 1) * strength * w, rng.uniform(-1, 1) * strength * h] for _ in range(4)]
    )
    matrix = cv2.getPerspectiveTransform(src, dst)
    out = cv2.warpPerspective(np.asarray(im), matrix, (w, h), borderMode=cv2.BORDER_CONSTANT)
    return Image.fromarray(out)


def caption(im: Image.Image, rng: random.Random) -> Image.Image:
    """A meme-like caption band above (or below) the picture."""
    w, h = im.size
    band = max(12, int(h * rng.uniform(0.15, 0.3)))
    out = Image.new("RGB", (w, h + band), (255, 255, 255) if rng.random() < 0.7 else (0, 0, 0))
    top = rng.random() < 0.7
    out.paste(im, (0, band if top else 0))
    _, _, glyphs, _, _ = _augly()
    font = ImageFont.truetype(str(rng.choice(sorted(glyphs))), max(8, int(band * 0.55)))
    words = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz    ") for _ in range(rng.randint(8, 30)))
    fill = (0, 0, 0) if out.getpixel((0, 0)) == (255, 255, 255) else (255, 255, 255)
    ImageDraw.Draw(out).text((4, (0 if top else h) + band * 0.15), words, fill=fill, font=font)
    return out


def _text(im: Image.Image, rng: random.Random, size: tuple[float, float]) -> Image.Image:
    imaugs, _, glyphs, _, _ = _augly()
    font = rng.choice(sorted(glyphs))
    n = glyphs[font]
    return imaugs.overlay_text(
        im,
        text=[[rng.randrange(n) for _ in range(rng.randint(4, 12))]],
        font_file=str(font),
        font_size=rng.uniform(*size),
        opacity=rng.uniform(0.7, 1.0),
        color=_colour(rng),
        x_pos=rng.uniform(0, 0.5),
        y_pos=rng.uniform(0, 0.8),
    )


def _emoji(im: Image.Image, rng: random.Random, size: tuple[float, float]) -> Image.Image:
    imaugs, emojis, _, _, _ = _augly()
    s = rng.uniform(*size)
    return imaugs.overlay_emoji(
        im,
        emoji_path=str(rng.choice(emojis)),
        opacity=rng.uniform(0.8, 1.0),
        emoji_size=s,
        x_pos=rng.uniform(0, max(0.0, 1 - s)),
        y_pos=rng.uniform(0, max(0.0, 1 - s)),
    )


def ordinary_ops() -> dict:
    """Name -> edit(image, rng): the ordinary AugLy edits of DISC21 (1-3 chained)."""
    imaugs = _augly()[0]
    return {
        "crop": lambda im, r: crop_area(im, r, 0.5, 0.9),
        "emoji": lambda im, r: _emoji(im, r, (0.12, 0.3)),
        "text": lambda im, r: _text(im, r, (0.07, 0.14)),
        "rotate": lambda im, r: imaugs.rotate(im, degrees=r.choice([-25, -12, -5, 6, 15, 30])),
        "rot90": lambda im, r: im.transpose(
            r.choice(
                [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_180]
            )
        ),
        "hflip": lambda im, r: imaugs.hflip(im),
        "jitter": lambda im, r: imaugs.color_jitter(
            im,
            brightness_factor=r.uniform(0.5, 1.5),
            contrast_factor=r.uniform(0.5, 1.5),
            saturation_factor=r.uniform(0.0, 2.0),
        ),
        "jpeg": lambda im, r: imaugs.encoding_quality(im, quality=r.randint(10, 50)),
        "blur": lambda im, r: imaugs.blur(im, radius=r.uniform(1, 3)),
        "pixel": lambda im, r: imaugs.pixelization(im, ratio=r.uniform(0.25, 0.6)),
        "pad": lambda im, r: imaugs.pad(
            im, w_factor=r.uniform(0.05, 0.3), h_factor=r.uniform(0.05, 0.3), color=_colour(r)
        ),
        "scale": lambda im, r: imaugs.scale(im, factor=r.uniform(0.35, 1.5)),
        "grey": lambda im, r: imaugs.grayscale(im),
        "sharpen": lambda im, r: imaugs.sharpen(im, factor=r.uniform(2, 8)),
        "noise": lambda im, r: imaugs.random_noise(
            im, var=r.uniform(0.005, 0.03), seed=r.randrange(1 << 30)
        ),
        "perspective": lambda im, r: perspective(im, r, r.uniform(0.04, 0.12)),
        "aspect": lambda im, r: imaugs.change_aspect_ratio(im, ratio=r.uniform(0.6, 1.7)),
        "caption": caption,
        "stripes": lambda im, r: imaugs.overlay_stripes(
            im,
            line_width=r.uniform(0.1, 0.3),
            line_color=_colour(r),
            line_angle=r.uniform(-60, 60),
            line_density=r.uniform(0.2, 0.5),
            line_opacity=r.uniform(0.4, 0.8),
        ),
        "skew": lambda im, r: imaugs.skew(
            im, skew_factor=r.uniform(-0.3, 0.3), axis=r.randint(0, 1)
        ),
    }


def strong_ops() -> dict:
    """Stronger settings for the heavy tier (3-5 chained)."""
    imaugs = _augly()[0]
    ops = ordinary_ops()
    ops.update(
        {
            "crop": lambda im, r: crop_area(im, r, 0.3, 0.7),
            "jpeg": lambda im, r: imaugs.encoding_quality(im, quality=r.randint(5, 20)),
            "blur": lambda im, r: imaugs.blur(im, radius=r.uniform(2, 4)),
            "pixel": lambda im, r: imaugs.pixelization(im, ratio=r.uniform(0.15, 0.35)),
            "emoji": lambda im, r: _emoji(im, r, (0.25, 0.45)),
            "text": lambda im, r: _text(im, r, (0.12, 0.2)),
            "perspective": lambda im, r: perspective(im, r, r.uniform(0.1, 0.18)),
            "jitter": lambda im, r: imaugs.color_jitter(
                im,
                brightness_factor=r.uniform(0.3, 1.8),
                contrast_factor=r.uniform(0.3, 1.8),
                saturation_factor=r.uniform(0.0, 3.0),
            ),
            "rotate": lambda im, r: imaugs.rotate(im, degrees=r.uniform(-45, 45)),
        }
    )
    return ops


def apply_tier(tier: str, im: Image.Image, rng: random.Random, donor) -> tuple[Image.Image, str]:
    """Edit ``im`` as the tier says; ``donor()`` gives another (never indexed) photo."""
    imaugs, _, _, templates, template_dir = _augly()
    ops = ordinary_ops()
    names: list[str] = []

    def chain(image, pool, names_, k):
        for name in rng.sample(sorted(pool), k):
            image = pool[name](image, rng).convert("RGB")
            names_.append(name)
        return image

    if tier == "ordinary":
        im = chain(im, ops, names, rng.randint(1, 3))
    elif tier == "hard-crop":
        im = crop_area(im, rng, 0.1, 0.4)
        names.append("crop10-40")
        rest = {k: v for k, v in ops.items() if k not in ("crop", "pad", "caption")}
        im = chain(im, rest, names, rng.randint(1, 2))
    elif tier == "overlay":
        kind = rng.choice(
            ["into-photo", "into-photo", "photo-over", "emoji-over", "text-over", "screenshot"]
        )
        names.append(kind)
        if rng.random() < 0.5:  # a light edit first
            im = chain(
                im, {k: ops[k] for k in ("jitter", "crop", "grey", "hflip", "scale")}, names, 1
            )
        if kind == "into-photo":  # the copy pasted small into another photo
            bg = donor()
            bg = bg.resize((max(bg.width, 480), round(bg.height * max(bg.width, 480) / bg.width)))
            size = rng.uniform(0.3, 0.6)
            im = imaugs.overlay_onto_background_image(
                im,
                background_image=bg,
                overlay_size=size,
                x_pos=rng.uniform(0, 1 - size),
                y_pos=rng.uniform(0, 1 - size),
            )
        elif kind == "photo-over":  # another photo pasted over the copy
            size = rng.uniform(0.35, 0.6)
            im = imaugs.overlay_image(
                im,
                overlay=donor(),
                overlay_size=size,
                opacity=1.0,
                x_pos=rng.uniform(0, 1 - size),
                y_pos=rng.uniform(0, 1 - size),
            )
        elif kind == "emoji-over":
            for _ in range(rng.randint(1, 3)):
                im = _emoji(im, rng, (0.3, 0.5))
        elif kind == "text-over":
            for _ in range(rng.randint(2, 4)):
                im = _text(im, rng, (0.12, 0.22))
        else:
            template = rng.choice(templates)
            im = imaugs.overlay_onto_screenshot(
                im,
                template_filepath=str(template),
                template_bboxes_filepath=str(template_dir / "bboxes.json"),
                crop_src_to_fit=rng.random() < 0.5,
            )
        im = im.convert("RGB")
        if rng.random() < 0.5:
            im = chain(im, {k: ops[k] for k in ("jpeg", "blur", "scale", "noise")}, names, 1)
    elif tier == "heavy":
        strong = strong_ops()
        k = rng.randint(3, 5)
        im = chain(im, strong, names, k)
        if rng.random() < 0.3:
            size = rng.uniform(0.25, 0.4)
            im = imaugs.overlay_image(
                im,
                overlay=donor(),
                overlay_size=size,
                opacity=1.0,
                x_pos=rng.uniform(0, 1 - size),
                y_pos=rng.uniform(0, 1 - size),
            ).convert("RGB")
            names.append("photo-over")
    else:
        raise ValueError(tier)
    # Keep queries a sensible size (AugLy's screenshot templates are 1200 px wide).
    if max(im.size) > 1024:
        im.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
    if min(im.size) < 16:
        im = im.resize((max(16, im.width), max(16, im.height)))
    return im, "+".join(names)


# --------------------------------------------------------------------------------------------
# the set
# --------------------------------------------------------------------------------------------


def _tier_counts(n: int) -> dict[str, int]:
    counts = {t: round(n * share) for t, share in TIERS.items()}
    counts["ordinary"] += n - sum(counts.values())
    return counts


def build(name: str = "full", *, seed: int = SEED, progress: bool = True) -> dict:
    """Build (or load) the set ``name`` ("full" or "small"); returns its description."""
    root = OUT / name
    described = root / "set.json"
    if described.exists():
        return json.loads(described.read_text())
    sizes = SIZES[name]
    rng = random.Random(seed)
    pools = _pools(rng)
    frames = pools["frames"]
    small = name == "small"

    # references: real images first, then collages of held-apart tiles up to the size
    refs: list[list] = []
    src: list[str] = []
    n_corel = 300 if small else len(pools["corel_index"])
    n_tiny = 1000 if small else len(pools["tiny_index"])
    for p in pools["corel_index"][:n_corel]:
        refs.append(["file", p])
        src.append("corel")
    for i in pools["frame_index"]:
        refs.append(["file", frames[i]])
        src.append("gopro")
    for p in pools["ukb_index"]:
        refs.append(["file", p])
        src.append("ukbench")
    for p in pools["tiny_index"][:n_tiny]:
        refs.append(_tiny(rng, p))
        src.append("tiny")
    tiles = pools["tiny_tiles"]
    while len(refs) < sizes["refs"]:
        refs.append(["mosaic", rng.sample(tiles, 4), rng.randint(256, 320)])
        src.append("collage")

    # the background pool for score normalisation (same sources, never indexed or queried)
    n_bg = 500 if small else 1150
    bg = [_tiny(rng, p) for p in pools["tiny_bg"][: n_bg - len(pools["corel_bg"])]]
    bg += [["file", p] for p in pools["corel_bg"]]

    # originals of negatives and donors (never indexed)
    held = [["file", p] for p in pools["corel_held"]] + [_tiny(rng, p) for p in pools["tiny_held"]]
    rng.shuffle(held)
    donors = held[: len(held) // 3]
    neg_originals = held[len(held) // 3 :]
    donor_frames = [
        frames[i + o]
        for i in pools["frame_index"]
        for o in FRAME_DONOR_OFFSETS
        if i + o < len(frames)
    ]
    donors += [["file", f] for f in donor_frames]

    # positives' originals: indexed real images (not collages), mixed sources
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(src):
        by_source.setdefault(s, []).append(i)
    for v in by_source.values():
        rng.shuffle(v)

    def positives(n: int, taken: set[int]) -> list[int]:
        weights = {"corel": 0.45, "tiny": 0.47, "gopro": 0.03, "ukbench": 0.05}
        out = []
        for s, w in weights.items():
            want = (
                round(n * w)
                if s != "tiny"
                else n - sum(round(n * x) for k, x in weights.items() if k != "tiny")
            )
            pool = [i for i in by_source[s] if i not in taken] or by_source[s]
            chosen = [pool[j % len(pool)] for j in range(want)]  # small pools repeat
            out += chosen
            taken.update(chosen)
        rng.shuffle(out)
        return out

    def near_misses(n: int, offsets: tuple[int, ...]) -> list[list]:
        near_frames = [
            frames[i + o] for i in pools["frame_index"] for o in offsets if i + o < len(frames)
        ]
        pool = [["file", f] for f in near_frames] + [["file", p] for p in pools["ukb_near"]]
        rng.shuffle(pool)
        return [pool[j % len(pool)] for j in range(n)]

    queries_dir = root / "queries"
    queries_dir.mkdir(parents=True, exist_ok=True)
    queries: list[dict] = []
    taken: set[int] = set()
    neg_iter = iter(neg_originals * 4)

    def donor():
        return load(rng.choice(donors))

    for split, n_pos, n_neg, offsets in (
        ("test", sizes["pos"], sizes["neg"], FRAME_OFFSETS_TEST),
        ("calib", sizes["calib_pos"], sizes["calib_neg"], FRAME_OFFSETS_CALIB),
    ):
        pos_refs = iter(positives(n_pos, taken))
        n_near = round(n_neg * NEAR_MISS)
        near = iter(near_misses(n_near, offsets))
        jobs = []
        for kind, n in (("pos", n_pos), ("neg", n_neg)):
            for tier, count in _tier_counts(n).items():
                for j in range(count):
                    if kind == "pos":
                        r = next(pos_refs)
                        jobs.append((tier, r, refs[r], "", src[r]))
                    elif tier == "ordinary" and j < n_near:
                        rec = next(near)
                        origin = "gopro" if "frames" in rec[1] else "ukbench"
                        jobs.append((tier, -1, rec, "near-miss", origin))
                    else:
                        rec = next(neg_iter)
                        jobs.append((tier, -1, rec, "", "corel" if rec[0] == "file" else "tiny"))
        for tier, truth, recipe, note, origin in jobs:
            qi = len(queries)
            qrng = random.Random(rng.randrange(1 << 62))
            np.random.seed(qrng.randrange(1 << 31))
            random.seed(qrng.randrange(1 << 31))
            image, chain = apply_tier(tier, load(recipe), qrng, donor)
            path = queries_dir / f"q{qi:05d}.jpg"
            image.save(path, quality=qrng.randint(75, 95))
            queries.append(
                {
                    "path": str(path.relative_to(ROOT)),
                    "split": split,
                    "tier": tier,
                    "truth": truth,
                    "chain": chain,
                    "note": note,
                    "source": origin,
                    "original": recipe,
                }
            )
            if progress and qi % 200 == 0:
                print(f"  query {qi} ({split}, {tier})", flush=True)
    data = {
        "name": name,
        "seed": seed,
        "refs": refs,
        "ref_source": src,
        "bg": bg,
        "queries": queries,
    }
    described.write_text(json.dumps(data))
    return data


# --------------------------------------------------------------------------------------------
# items for the embedder: keys, sizes, loader
# --------------------------------------------------------------------------------------------

_SIZES: dict[str, tuple[int, int]] = {}


def recipe_size(recipe: list) -> tuple[int, int]:
    if recipe[0] in ("tiny", "mosaic"):
        return recipe[2], recipe[2]
    path = recipe[1]
    if path not in _SIZES:
        with Image.open(path) as im:
            _SIZES[path] = im.size
    return _SIZES[path]


class Items:
    """Keys ("r12", "q5", "b7"), sizes and a loader for the set's images."""

    def __init__(self, data: dict) -> None:
        self.data = data
        self.recipes = {f"r{i}": r for i, r in enumerate(data["refs"])}
        self.recipes.update({f"b{i}": r for i, r in enumerate(data["bg"])})
        self.query_paths = {f"q{i}": ROOT / q["path"] for i, q in enumerate(data["queries"])}
        self._ids: dict[str, str] = {}

    def cache_id(self, key: str) -> str:
        """A content id for the vector cache: the recipe's hash, or the query file's."""
        import hashlib

        if key not in self._ids:
            if key in self.query_paths:
                blob = self.query_paths[key].read_bytes()
            else:
                blob = json.dumps(self.recipes[key]).encode()
            self._ids[key] = hashlib.blake2b(blob, digest_size=10).hexdigest()
        return self._ids[key]

    def size(self, key: str) -> tuple[int, int]:
        if key in self.query_paths:
            path = str(self.query_paths[key])
            if path not in _SIZES:
                with Image.open(path) as im:
                    _SIZES[path] = im.size
            return _SIZES[path]
        return recipe_size(self.recipes[key])

    def load(self, key: str) -> Image.Image:
        if key in self.query_paths:
            return Image.open(self.query_paths[key]).convert("RGB")
        return load(self.recipes[key])

    def keys(self, kind: str, idx=None) -> list[str]:
        n = {
            "r": len(self.data["refs"]),
            "b": len(self.data["bg"]),
            "q": len(self.data["queries"]),
        }[kind]
        return [f"{kind}{i}" for i in (range(n) if idx is None else idx)]
