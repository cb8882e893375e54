"""What the collection answers with: a search hit and an indexing run's report.

Example:
    >>> SearchResult(id=3, path="/photos/a.jpg", score=0.94123456).to_dict()
    {'path': '/photos/a.jpg', 'score': 0.941235, 'id': 3}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lookalike.ingest.exif import taken_text


@dataclass
class SearchResult:
    """One hit: the image id, its first file, its score (cosine similarity; P(copy) in a copy
    search, the cosine then kept in ``cosine``), and what else is known."""

    id: int
    path: str
    score: float
    paths: tuple[str, ...] = ()
    width: int = 0
    height: int = 0
    metadata: dict = field(default_factory=dict)
    #: What the file's header says (``store.ImageRecord.info``: taken time, GPS, camera, lens).
    info: dict = field(default_factory=dict)
    # Set by geometric verification (copies.verify_results); None when not checked.
    verified: bool | None = None
    inliers: int | None = None
    region: tuple[int, int, int, int] | None = None
    #: A copy search's raw cosine similarity, where ``score`` is P(copy) (copies.scoring).
    cosine: float | None = None

    def cosine_or_score(self) -> float:
        """The raw cosine: ``cosine`` once a copy score replaced ``score``, else ``score``."""
        return float(self.score if self.cosine is None else self.cosine)

    def to_dict(self) -> dict:
        """The JSON form: ``path``, ``score``, ``id`` (the public contract) and extras."""
        out = {"path": self.path, "score": round(float(self.score), 6), "id": self.id}
        if len(self.paths) > 1:
            out["duplicates"] = list(self.paths[1:])
        if self.metadata:
            out["metadata"] = self.metadata
        out.update(described(self.info))
        if self.verified is not None:
            out["verified"] = bool(self.verified)
            out["inliers"] = int(self.inliers or 0)
            out["region"] = list(self.region) if self.region else None
        if self.cosine is not None:
            out["cosine"] = round(float(self.cosine), 6)
        return out


def described(info: dict) -> dict:
    """The JSON fields of an image's header info: ``taken`` (ISO 8601, with the offset when
    known), ``taken_from`` (``exif`` or ``mtime``), ``gps`` ([lat, lon]), ``camera``, ``lens``.

    Example:
        >>> described({"taken_at": 1619863200.0, "taken_offset": 120, "taken_source": "exif"})
        {'taken': '2021-05-01T10:00:00+02:00', 'taken_from': 'exif'}
    """
    out: dict = {}
    if info.get("taken_at") is not None:
        out["taken"] = taken_text(info["taken_at"], info.get("taken_offset"))
        out["taken_from"] = info.get("taken_source")
    if info.get("lat") is not None and info.get("lon") is not None:
        out["gps"] = [info["lat"], info["lon"]]
    make, model = info.get("camera_make") or "", info.get("camera_model") or ""
    camera = model if make and model.lower().startswith(make.lower()) else f"{make} {model}"
    if camera.strip():
        out["camera"] = camera.strip()
    if info.get("lens"):
        out["lens"] = info["lens"]
    return out


@dataclass
class IndexReport:
    """What an ``add`` or ``sync`` did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def embedded(self) -> int:
        """Images that went through the network in this run."""
        return self.added + self.updated

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["duplicates"] = [{"path": p, "same_as": o} for p, o in self.duplicates]
        out["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        out["images_per_second"] = round(self.images_per_second, 2)
        out["seconds"] = round(self.seconds, 3)
        return out
