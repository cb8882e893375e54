"""The words benchmark set (benchmarks/words.py): text rendered onto real photos, with its truth.

Words and short phrases (dictionary words, made-up brand names, numbers, mixed case) are drawn
onto Corel-1k photos in seven fonts that ship with Matplotlib (DejaVu Sans/Serif/Mono, bold and
italic, STIX), with their ink 12-120 px high, in colours chosen against the background (or
with an outline), rotated up to +-15 degrees, some with a perspective warp, Gaussian blur and
JPEG compression (quality 35-95), on busy photos and on plain backgrounds (a flat or graded
colour, a blurred photo). Photos are upscaled 2-3x for large text so words fit. Images without
text are the other Corel photos, untouched. Everything comes from one seed.

Each text image's truth is a list of (phrase, words, ink height in px); a query is one word or
one two-word phrase; the images relevant to it are those showing it. Some words are shown in
two or three images, so a query can have several relevant images.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
)
DICTIONARY = [
    "harbour",
    "market",
    "garden",
    "station",
    "museum",
    "bakery",
    "theatre",
    "library",
    "bridge",
    "castle",
    "river",
    "mountain",
    "coffee",
    "pizza",
    "hotel",
    "pharmacy",
    "airport",
    "subway",
    "ticket",
    "window",
    "summer",
    "winter",
    "autumn",
    "spring",
    "orange",
    "yellow",
    "purple",
    "silver",
    "golden",
    "forest",
    "island",
    "village",
    "street",
    "avenue",
    "square",
    "office",
    "school",
    "hospital",
    "police",
    "garage",
    "parking",
    "welcome",
    "exit",
    "entrance",
    "closed",
    "open",
    "sale",
    "discount",
    "fresh",
    "bread",
    "cheese",
    "butter",
    "honey",
    "apple",
    "lemon",
    "tomato",
    "potato",
    "chicken",
    "salmon",
    "dinner",
    "lunch",
    "breakfast",
    "evening",
    "morning",
    "holiday",
    "journey",
    "travel",
    "camera",
    "guitar",
    "piano",
    "violin",
    "concert",
    "festival",
    "gallery",
    "cinema",
    "stadium",
    "football",
    "tennis",
    "hockey",
    "marathon",
    "bicycle",
    "scooter",
    "tractor",
    "engine",
    "rocket",
    "planet",
    "galaxy",
    "comet",
    "thunder",
    "rainbow",
    "desert",
    "canyon",
    "valley",
    "meadow",
    "orchard",
    "vineyard",
    "harvest",
    "lantern",
    "candle",
    "mirror",
    "pillow",
    "blanket",
    "kitchen",
    "bottle",
    "basket",
    "jacket",
    "pocket",
    "button",
    "ribbon",
    "marble",
    "copper",
    "bronze",
    "crystal",
]
SYLLABLES = [
    "ka",
    "zen",
    "tri",
    "ro",
    "lux",
    "vo",
    "mi",
    "sa",
    "nex",
    "ta",
    "bel",
    "quo",
    "fi",
    "dor",
    "ix",
    "al",
    "pra",
    "ven",
    "tu",
    "cor",
]
ACCENTED = ["Café", "Crème", "Müller", "São Paulo", "Señor", "Zürich", "Élan", "Kraków"]


@dataclass
class Text:
    """One text drawn in an image: the phrase, its folded words, ink height (px)."""

    phrase: str
    height: int
    font: str
    angle: float


@dataclass
class Sample:
    """One image of the set: file name, kind (text, plain-text, none), texts drawn."""

    name: str
    kind: str
    texts: list[Text] = field(default_factory=list)


def vocabulary(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct phrases: dictionary words, brands, numbers, mixed case, accents, pairs."""
    out: list[str] = []
    seen: set[str] = set()

    def add(text: str) -> None:
        if text.casefold() not in seen:
            seen.add(text.casefold())
            out.append(text)

    while len(out) < n:
        kind = rng.random()
        if kind < 0.35:
            word = rng.choice(DICTIONARY)
            add(rng.choice([word, word.upper(), word.capitalize()]))
        elif kind < 0.55:
            brand = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
            add(rng.choice([brand.capitalize(), brand.upper(), brand[:2] + brand[2:].upper()]))
        elif kind < 0.7:
            add(str(rng.randint(10, 99999)))
        elif kind < 0.8:
            add(rng.choice(ACCENTED) + " " + rng.choice(DICTIONARY).capitalize())
        else:
            add(f"{rng.choice(DICTIONARY).capitalize()} {rng.choice(DICTIONARY).capitalize()}")
    return out


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf" / name), size)


def _size_for_height(font: str, phrase: str, height: int) -> tuple[int, ImageFont.FreeTypeFont]:
    """The font size whose ink for ``phrase`` is ``height`` px high."""
    size = height
    for _ in range(4):
        face = _font(font, size)
        _, y0, _, y1 = face.getbbox(phrase)
        ink = max(1, y1 - y0)
        size = max(6, round(size * height / ink))
    return size, _font(font, size)


def _colours(rng: random.Random, patch: np.ndarray) -> tuple[tuple, tuple | None]:
    """A text colour that stands out from ``patch`` (RGB), and an outline colour or None."""
    luminance = float(patch.mean()) if patch.size else 128.0
    light = [(255, 255, 255), (255, 230, 40), (250, 250, 200), (120, 255, 255)]
    dark = [(0, 0, 0), (20, 20, 120), (150, 0, 0), (0, 80, 0)]
    fill = rng.choice(dark if luminance > 128 else light)
    outline = None
    if rng.random() < 0.3:
        outline = (0, 0, 0) if sum(fill) > 380 else (255, 255, 255)
    return fill, outline


def _plain(rng: random.Random, size: tuple[int, int], photo: Image.Image) -> Image.Image:
    choice = rng.random()
    if choice < 0.33:
        return Image.new("RGB", size, tuple(rng.randint(0, 255) for _ in range(3)))
    if choice < 0.66:
        a = np.array([rng.randint(0, 255) for _ in range(3)], np.float32)
        b = np.array([rng.randint(0, 255) for _ in range(3)], np.float32)
        t = np.linspace(0, 1, size[0], dtype=np.float32)[None, :, None]
        grad = a + (b - a) * t
        return Image.fromarray(np.repeat(grad, size[1], axis=0).astype(np.uint8))
    return photo.resize(size).filter(ImageFilter.GaussianBlur(12))


def _perspective(rng: random.Random, image: Image.Image) -> Image.Image:
    w, h = image.size
    d = 0.08
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    dst = [(x + rng.uniform(-d, d) * w, y + rng.uniform(-d, d) * h) for x, y in src]
    coeffs = _perspective_coeffs(dst, src)
    return image.transform((w, h), Image.PERSPECTIVE, coeffs, Image.BICUBIC)


def _perspective_coeffs(pa, pb) -> list[float]:
    matrix = []
    for p1, p2 in zip(pa, pb, strict=True):
        matrix.append([p1[0], p1[1], 1, 0, 0, 0, -p2[0] * p1[0], -p2[0] * p1[1]])
        matrix.append([0, 0, 0, p1[0], p1[1], 1, -p2[1] * p1[0], -p2[1] * p1[1]])
    a = np.array(matrix, dtype=np.float64)
    b = np.array(pb, dtype=np.float64).reshape(8)
    return np.linalg.solve(a, b).tolist()


def render(
    rng: random.Random, photo: Image.Image, phrases: list[str], heights: list[int], plain: bool
) -> tuple[Image.Image, list[Text]] | None:
    """``photo`` (or a plain background) with ``phrases`` drawn; None when they do not fit."""
    scale = 1
    tallest = max(heights)
    if tallest >= 40:
        scale = 2 if tallest < 80 else 3
    size = (photo.width * scale, photo.height * scale)
    base = _plain(rng, size, photo) if plain else photo.resize(size, Image.BICUBIC)
    texts = []
    taken: list[tuple[int, int, int, int]] = []
    for phrase, height in zip(phrases, heights, strict=True):
        font_name = rng.choice(FONTS)
        _, face = _size_for_height(font_name, phrase, height)
        x0, y0, x1, y1 = face.getbbox(phrase)
        pad = max(4, height // 3)
        layer = Image.new("L", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), 0)
        ImageDraw.Draw(layer).text((pad - x0, pad - y0), phrase, font=face, fill=255)
        angle = rng.uniform(-15, 15) if rng.random() < 0.6 else 0.0
        mask = layer.rotate(angle, resample=Image.BICUBIC, expand=True)
        if mask.width >= size[0] - 4 or mask.height >= size[1] - 4:
            return None
        for _ in range(30):
            x = rng.randint(2, size[0] - mask.width - 2)
            y = rng.randint(2, size[1] - mask.height - 2)
            box = (x, y, x + mask.width, y + mask.height)
            if all(box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3] for t in taken):
                break
        else:
            return None
        taken.append(box)
        patch = np.asarray(base.crop(box))
        fill, outline = _colours(rng, patch)
        if outline is not None:
            grown = mask.filter(ImageFilter.MaxFilter(3 if height < 30 else 5))
            base.paste(Image.new("RGB", mask.size, outline), (x, y), grown)
        base.paste(Image.new("RGB", mask.size, fill), (x, y), mask)
        texts.append(Text(phrase, int(height), font_name, round(angle, 1)))
    if rng.random() < 0.25:
        base = _perspective(rng, base)
    if rng.random() < 0.4:
        base = base.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return base, texts


HEIGHT_BINS = ((12, 20), (20, 40), (40, 80), (80, 121))


def build(out: Path, photos: list[Path], *, n_text: int, n_none: int, seed: int = 21) -> list:
    """Write the set into ``out`` (JPEG files + truth.json); returns the samples."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    photos = sorted(photos)
    rng.shuffle(photos)
    none_photos, text_photos = photos[:n_none], photos[n_none:]
    vocab = vocabulary(rng, n_text)
    samples: list[Sample] = []
    phrase_pool = list(vocab)
    for i in range(n_text):
        photo = Image.open(text_photos[i % len(text_photos)]).convert("RGB")
        low, high = HEIGHT_BINS[i % len(HEIGHT_BINS)]
        count = 1 if high > 80 else rng.choice([1, 1, 2])
        # each image shows its own phrase; one in five repeats an earlier one (several relevant)
        own = vocab[i]
        phrases = [own] + [rng.choice(phrase_pool[: i + 1]) for _ in range(count - 1)]
        if i > 10 and rng.random() < 0.2:
            phrases[0] = rng.choice(vocab[:i])
        heights = [rng.randint(low, high - 1) for _ in phrases]
        plain = rng.random() < 0.3
        made = None
        for _ in range(10):
            made = render(rng, photo, phrases, heights, plain)
            if made is not None:
                break
            heights = [max(low, h - 4) for h in heights]
            phrases = phrases[:1]
            heights = heights[:1]
        if made is None:
            continue
        image, texts = made
        name = f"text_{i:04d}.jpg"
        _save(image, out / name, rng.randint(35, 95))
        samples.append(Sample(name, "plain-text" if plain else "text", texts))
    for i, path in enumerate(none_photos):
        name = f"none_{i:04d}.jpg"
        _save(Image.open(path).convert("RGB"), out / name, 92)
        samples.append(Sample(name, "none"))
    (out / "truth.json").write_text(json.dumps([asdict(s) for s in samples], indent=1))
    return samples


def _save(image: Image.Image, path: Path, quality: int) -> None:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    path.write_bytes(buffer.getvalue())


def load(folder: Path) -> list[Sample]:
    """The samples of a set written by :func:`build`."""
    raw = json.loads((folder / "truth.json").read_text())
    return [Sample(s["name"], s["kind"], [Text(**t) for t in s["texts"]]) for s in raw]
