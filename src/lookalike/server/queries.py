"""What the server asks of a catalogue: search (image, text, words, more like this), the
copy space and duplicate groups, and items found inside a photo.

:class:`CatalogQueries` is the query half of :class:`lookalike.server.catalogs.Catalogs` (a
mixin: it uses the catalogue manager's readers, writers and write locks); its answers are JSON
shapes with API ids, never server paths.

Example:
    >>> cats.search(catalog_id, text="a red bus", k=5)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from lookalike.collection import Collection, SearchResult
from lookalike.errors import (
    BadRequestError,
    CollectionError,
    NotFoundError,
    UnavailableError,
)
from lookalike.images import decode, decode_cost
from lookalike.models import ModelError
from lookalike.server.shapes import (
    clip_box,
    crop,
    hit_json,
    matches,
    record_json,
    words_json,
)

#: How many times more results a filtered search asks the index for.
OVERFETCH = 10


def combined_filter(where: dict | None, filters: dict | None) -> dict | None:
    """One ``collection.filters`` mapping of a request's ``where`` and ``filters`` (metadata
    equal to values, or among them when the stored value is a list)."""
    if not where and not filters:
        return None
    out = dict(where or {})
    if filters:
        out["metadata"] = {**dict(out.get("metadata") or {}), **filters}
    return out


class CatalogQueries:
    """Searches, duplicates and detection over the catalogues (mixed into ``Catalogs``)."""

    # -- search -------------------------------------------------------------------------------
    def search(
        self,
        catalog_id: str,
        *,
        image: bytes | None = None,
        text: str | None = None,
        k: int = 10,
        filters: dict | None = None,
        region: Sequence[float] | None = None,
        words: str | None = None,
        where: dict | None = None,
    ) -> list[dict]:
        """Best matches for an image (optionally a region of it) or a text, filtered; with
        ``words``, ranked by the words read in the images (combined with the image or text).

        ``filters`` (metadata equal to values) and ``where`` (``collection.filters``: taken
        time, place, camera, metadata) are exact for image and text queries: the allowed images
        are selected first, so ``k`` results come back whenever ``k`` images match."""
        col = self.reader(catalog_id)
        allowed = col.ids_where(combined_filter(where, filters))
        if words is not None:
            fetch = min(k * OVERFETCH, 1000) if filters or allowed is not None else k
            found = (words, fetch, k, image, text, filters, region)
            return self._words_search(col, catalog_id, *found, allowed=allowed)
        if image is not None:
            query = decode(image, **self.query_options(catalog_id, region))
            if region is not None:
                query = crop(query, region)
            hits = col.search(query, k=k, where=allowed)
        elif text is not None:
            hits = self._text_search(col, text, k, allowed)
        else:
            raise BadRequestError("give an image, an image URL or a text")
        return [hit_json(catalog_id, h) for h in hits[:k]]

    def similar(
        self, catalog_id: str, image_id: int, k: int = 10, where: dict | None = None
    ) -> list[dict]:
        """ "More like this": the images most like a stored one, from its stored vector (no
        decoding), itself left out; ``where`` as for :meth:`search`."""
        col = self.reader(catalog_id)
        if col.get(image_id) is None:
            raise NotFoundError(f"no image {image_id} in this catalogue")
        hits = col.search_like(image_id, k, where=col.ids_where(where))
        return [hit_json(catalog_id, h) for h in hits]

    def query_options(self, catalog_id: str, region: Sequence[float] | None = None) -> dict:
        """How a search query is decoded: at the Collection's own decode scale for a whole
        image (as its files were indexed), in full for a region (it is cropped first); always
        under ``max_pixels`` and ``max_decode_bytes``."""
        side = None if region is not None else self.reader(catalog_id).decode_side
        return dict(
            min_side=side,
            max_pixels=self.config.max_pixels,
            max_bytes=self.config.max_decode_bytes,
        )

    def query_cost(self, catalog_id: str, image: bytes, region=None) -> int:
        """The decode memory a search query takes: what the request reserves from the budget
        before its thread starts."""
        return decode_cost(image, **self.query_options(catalog_id, region))

    def detect_cost(self, image: bytes) -> int:
        """The decode memory a detect photo takes (decoded in full, under the bounds)."""
        return decode_cost(image, **self.detect_options())

    def detect_options(self) -> dict:
        return dict(max_pixels=self.config.max_pixels, max_bytes=self.config.max_decode_bytes)

    def _words_search(
        self, col, catalog_id, words, fetch, k, image, text, filters, region, allowed=None
    ) -> list[dict]:
        from lookalike.words import has_words, search_words

        if not has_words(col):
            raise BadRequestError(
                "this catalogue's words were never read: POST /catalogs/{id}/words reads them "
                "(needs write rights; later uploads are then read as they come)"
            )
        query = None
        if image is not None:
            query = decode(image, **self.query_options(catalog_id, region))
            if region is not None:
                query = crop(query, region)
        texts = [(text, 1.0)] if text else None
        hits = search_words(col, words, fetch, image=query, text=texts)
        if filters:
            hits = [h for h in hits if matches(h.metadata, filters)]
        if allowed is not None:
            hits = [h for h in hits if h.id in set(allowed.tolist())]
        out = []
        for hit in hits[:k]:
            extra = {key: v for key, v in hit.to_dict().items() if key.startswith(("words", "sim"))}
            extra["words"] = words_json(hit.words, hit.width, hit.height)
            out.append(hit_json(catalog_id, hit) | extra)
        return out

    def read_words(
        self, catalog_id: str, progress: Callable[[int, int], None] | None = None
    ) -> dict:
        """Read the words in every image of the catalogue that has not been read yet; from then
        on each upload's images are read as they are added."""
        from lookalike.words import add_words, words_info

        with self.write_lock(catalog_id):
            col = self.writer(catalog_id)
            report = self._retry_busy(lambda: add_words(col, progress=progress))
            info = words_info(col) or {}
        return {
            "read": report.read,
            "with_text": report.with_text,
            "lines": report.lines,
            "unreadable": len(report.missing),  # server paths are never shown
            "seconds": round(report.seconds, 3),
            "words": {k: v for k, v in info.items() if k not in ("path", "where")},
        }

    def words_to_read(self, catalog_id: str) -> int:
        """Images of the catalogue whose words are still to be read."""
        from lookalike.words import words_info

        info = words_info(self.reader(catalog_id))
        return len(self.reader(catalog_id)) if info is None else int(info.get("to_read", 0))

    def _read_new_words(self, col: Collection) -> None:
        """A catalogue whose words were read keeps them complete: the new images' words."""
        from lookalike.words import add_words, has_words

        if has_words(col):
            self._retry_busy(lambda: add_words(col))

    def _text_search(self, col: Collection, text: str, k: int, allowed=None) -> list[SearchResult]:
        if not col.has_text():
            raise BadRequestError("this catalogue's model has no text side: search it by image")
        if not text.strip():
            raise BadRequestError("the text is empty")
        # The API takes the text as it is: a ':' is part of it, not a weight (that is CLI syntax).
        return col.search_text([(text, 1.0)], k, where=allowed)

    # -- duplicates -----------------------------------------------------------------------------
    def copy_space_state(self, catalog_id: str) -> tuple[bool, int, int]:
        """(has a copy space, images without a copy vector, images)."""
        from lookalike.copies.space import COPY_SPACE

        col = self.reader(catalog_id)
        count = len(col)
        if COPY_SPACE not in col.spaces():
            return False, count, count
        return True, len(col.catalogue.ids_missing(COPY_SPACE)), count

    def add_copy_space(
        self, catalog_id: str, progress: Callable[[int, int], None] | None = None
    ) -> dict:
        """Give the catalogue its copy space (or complete it): ``Collection.add_copy_space``
        under the write lock, with the model already there or ``copies.DEFAULT_COPY_MODEL``."""
        from lookalike.copies.space import COPY_SPACE, DEFAULT_COPY_MODEL

        self.get(catalog_id)
        with self.write_lock(catalog_id):
            col = self.writer(catalog_id)
            model = col.spaces().get(COPY_SPACE, {}).get("model", DEFAULT_COPY_MODEL)
            self._ensure_files(catalog_id, col)
            try:
                report = self._retry_busy(lambda: col.add_copy_space(model, progress=progress))
            except ModelError as exc:
                raise UnavailableError(f"copy detection is not available: {exc}") from None
        return {
            "model": report.model,
            "embedded": report.embedded,
            "unreadable": len(report.missing),  # file paths are not the API's business
            "seconds": round(report.seconds, 3),
        }

    def duplicates(
        self,
        catalog_id: str,
        *,
        threshold: float | None = None,
        k: int = 10,
        verify: bool = False,
        limit: int = 500,
    ) -> dict:
        """Groups of near-duplicate images (``Collection.duplicates``) as API image ids: each
        with the suggested original and the others' copy-space scores, largest group first.

        Identical content uploaded twice is one image here, so exact copies never form a group.
        """
        from lookalike.copies.space import COPY_SPACE, threshold_for

        col = self.reader(catalog_id)
        if COPY_SPACE not in col.spaces():
            raise BadRequestError(
                "this catalogue has no copy-detection vectors yet: a key with write rights adds "
                "them by calling POST /catalogs/{id}/duplicates"
            )
        if verify:
            self._ensure_files(catalog_id, col)
        used = threshold_for(col) if threshold is None else float(threshold)
        groups = []
        records: dict[int, object] = {}

        def record(image_id: int):
            if image_id not in records:
                records[image_id] = col.get(image_id)
            return records[image_id]

        for group in col.duplicates(used, k, verify):
            seen = {group.original_id}
            others = []
            for other in group.others:
                if other["id"] in seen or other["kind"] != "near":
                    continue  # the same image under another file: one id in the API
                seen.add(other["id"])
                found = record(other["id"])
                if found is not None:
                    others.append({"score": other["score"], **record_json(catalog_id, found)})
            original = record(group.original_id)
            if others and original is not None:
                others.sort(key=lambda o: -o["score"])
                entry = {"original": record_json(catalog_id, original), "others": others}
                if group.decided:
                    entry["decided"] = "keep"  # the original was chosen (a "keep" decision)
                groups.append(entry)
        groups.sort(key=lambda g: (-len(g["others"]), -g["others"][0]["score"]))
        spec = col.spaces()[COPY_SPACE]
        return {
            "model": spec.get("model"),
            "threshold": round(used, 6),
            "k": k,
            "verified": verify,
            "images": len(col),
            "without_copy_vectors": len(col.catalogue.ids_missing(COPY_SPACE)),
            "total_groups": len(groups),
            "groups": groups[:limit],
        }

    def duplicate_decisions(self, catalog_id: str) -> dict:
        """The duplicates decisions kept in the catalogue, by image id
        (``copies.duplicates.decisions_by_id``)."""
        from lookalike.copies.duplicates import decisions_by_id

        return {"decisions": decisions_by_id(self.reader(catalog_id))}

    def decide_duplicates(
        self,
        catalog_id: str,
        decision: str,
        images: Sequence[int],
        *,
        threshold: float | None = None,
        k: int = 10,
    ) -> dict:
        """Record a duplicates decision about image ids (``copies.duplicates.decide_ids``:
        ``distinct`` a pair, or one image's whole group; ``keep`` one image as its group's
        original; ``forget`` the decisions naming these images) under the write lock; the
        decisions now held. The rules broken answer 400, an unknown image 404."""
        from lookalike.copies.duplicates import (
            DecisionError,
            check_decision,
            decide_ids,
            decisions_by_id,
        )

        try:
            check_decision(decision, len(images), "images")
        except DecisionError as exc:
            raise BadRequestError(str(exc)) from None
        self.get(catalog_id)
        ids = [int(i) for i in images]
        with self.write_lock(catalog_id):
            col = self.writer(catalog_id)
            known = {r.id for r in col.catalogue.images([i for i in ids if 0 <= i <= 2**62]) if r}
            missing = [i for i in ids if i not in known]
            if missing:
                raise NotFoundError(f"no image {missing[0]} in this catalogue")
            try:
                choices = self._retry_busy(
                    lambda: decide_ids(col, decision, ids, threshold=threshold, k=k)
                )
            except DecisionError as exc:
                raise BadRequestError(str(exc).replace(str(col.path), "this catalogue")) from None
            return {"decisions": decisions_by_id(col, choices)}

    # -- detection ------------------------------------------------------------------------------
    def detect(
        self,
        catalog_id: str,
        image: bytes,
        *,
        k: int = 3,
        proposals: Sequence[str] | None = None,
        min_score: float | None = None,
    ) -> dict:
        """Catalogue items inside a photo (``lookalike.detect.photo.detect`` with its defaults; the
        options given are passed through): per item its box in pixels and as fractions, the
        best matches as API images, and the keypoint confirmation."""
        from lookalike.detect.photo import detect

        col = self.reader(catalog_id)
        photo = decode(image, **self.detect_options())
        self._ensure_files(catalog_id, col)
        options: dict = {"k": k}
        if proposals is not None:
            options["proposals"] = list(proposals)
        if min_score is not None:
            options["min_score"] = float(min_score)
        start = time.perf_counter()
        try:
            found = detect(col, photo, **options)
        except CollectionError:
            raise
        except ValueError as exc:  # an unknown proposal source
            raise BadRequestError(str(exc)) from None
        except (RuntimeError, ImportError, OSError) as exc:  # a source not installed here
            if proposals is None:
                raise
            raise BadRequestError(f"proposal source not available: {exc}") from None
        width, height = photo.size
        items = []
        for item in found:
            x0, y0, x1, y1 = clip_box(item.box, width, height)
            score = float(item.score) if item.matches else math.nan
            items.append(
                {
                    "box": [x0, y0, x1, y1],
                    "region": [
                        round(x0 / width, 5),
                        round(y0 / height, 5),
                        round((x1 - x0) / width, 5),
                        round((y1 - y0) / height, 5),
                    ],
                    "source": item.source,
                    # The detector's class name, for proposal sources that have one ("ssd"...).
                    "label": getattr(item, "label", None),
                    "verified": bool(item.verified),
                    "inliers": int(item.inliers),
                    "score": round(score, 6) if math.isfinite(score) else None,
                    "matches": [hit_json(catalog_id, m) for m in item.matches],
                }
            )
        return {
            "width": width,
            "height": height,
            "items": items,
            "seconds": round(time.perf_counter() - start, 3),
        }

    # -- compare: why a query and a stored image match --------------------------------------------
    def match_options(self, region: Sequence[float] | None = None) -> dict:
        """How the images of :meth:`match` are decoded: reduced (the JPEG draft scale) to what
        keypoint verification uses, in full for a query region (it is cropped first); always
        under ``max_pixels`` and ``max_decode_bytes``."""
        from lookalike.keypoints.rerank import VERIFY_SIDE

        return dict(
            min_side=None if region is not None else VERIFY_SIDE,
            max_pixels=self.config.max_pixels,
            max_bytes=self.config.max_decode_bytes,
        )

    def match_cost(
        self, catalog_id: str, image_id: int, image: bytes, region: Sequence[float] | None = None
    ) -> int:
        """The decode memory :meth:`match` takes (the query's and the stored image's decodes):
        what the request reserves from the budget before its thread starts."""
        stored, _ = self.blob(catalog_id, image_id, "original")
        return decode_cost(image, **self.match_options(region)) + decode_cost(
            stored, **self.match_options()
        )

    def match(
        self,
        catalog_id: str,
        image_id: int,
        image: bytes,
        *,
        region: Sequence[float] | None = None,
        most: int | None = None,
    ) -> dict:
        """Keypoint verification of a query image (or a ``region`` of it) against a stored
        image (``keypoints.verify``): whether it is verified, the inliers, the matched region
        of the stored image (x0, y0, x1, y1 in its pixels; None unless verified), and at most
        ``most`` (:data:`MATCH_PAIRS`) inlier pairs [qx, qy, cx, cy] (query pixels, then stored
        image pixels; evenly sampled), with both images' sizes (the frames of those pixels)."""
        import numpy as np

        from lookalike.keypoints.verify import verify

        record = self.reader(catalog_id).get(image_id)
        if record is None:
            raise NotFoundError(f"no image {image_id} in this catalogue")
        stored, _ = self.blob(catalog_id, image_id, "original")
        query = decode(image, **self.match_options(region))
        offset = (0, 0)
        if region is not None:
            part = crop(query, region)
            offset = (round(float(region[0]) * query.width), round(float(region[1]) * query.height))
        else:
            part = query
        candidate = decode(stored, **self.match_options())
        result = verify(part, candidate)
        query_size = upright_size(image) or query.size
        image_size = (record.width, record.height) if record.width and record.height else None
        image_size = image_size or candidate.size
        # Decoded pixels (reduced by the draft scale) to each image's own pixels.
        scale = np.array(
            [
                query_size[0] / query.width,
                query_size[1] / query.height,
                image_size[0] / candidate.width,
                image_size[1] / candidate.height,
            ],
            np.float64,
        )
        pairs = np.zeros((0, 4)) if result.pairs is None else result.pairs.astype(np.float64)
        most = MATCH_PAIRS if most is None else most
        if len(pairs) > most:
            pairs = pairs[np.linspace(0, len(pairs) - 1, most).round().astype(int)]
        pairs = (pairs + 0.5 + [offset[0], offset[1], 0, 0]) * scale - 0.5
        box = None
        if result.verified and result.region is not None:
            x0, y0, x1, y1 = result.region
            box = list(
                clip_box((x0 * scale[2], y0 * scale[3], x1 * scale[2], y1 * scale[3]), *image_size)
            )
        return {
            "id": image_id,
            "verified": bool(result.verified),
            "inliers": int(result.inliers),
            "matches": int(result.matches),
            "reason": result.reason,
            "region": box,
            "pairs": [[round(float(v), 1) for v in row] for row in pairs],
            "query_size": [int(query_size[0]), int(query_size[1])],
            "image_size": [int(image_size[0]), int(image_size[1])],
        }


#: The most keypoint pairs :meth:`CatalogQueries.match` answers (enough to draw).
MATCH_PAIRS = 200


def upright_size(data: bytes) -> tuple[int, int] | None:
    """An image file's width and height as shown (EXIF orientation applied), from its header;
    None when the header cannot tell (a RAW file)."""
    import io

    from PIL import Image

    from lookalike.images import is_raw

    if is_raw(data):
        return None
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            orientation = header.getexif().get(0x0112, 1)
    except Exception:  # decode() already read it: a damaged EXIF block only loses the turn
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
