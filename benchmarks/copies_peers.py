"""lookalike's copy score beside immaculate on the DISC21-hard set (``copies_hard.py``), the same
images in one run.

immaculate (PyPI, Python >= 3.12: ``python3.12 -m venv /tmp/immvenv && /tmp/immvenv/bin/pip
install immaculate``) groups one folder; the folder holds the set's references and its test
queries (written as PNG), and a (query, reference) pair in one of its groups is a prediction:
no scores, so one operating point per method. lookalike's side uses the shipped calibration
(``lookalike.copies.scoring.CALIBRATIONS``, fitted on the full set's calibration split: on the
small set it is held out) on each query's top 10, and is read at immaculate's precision:
the recall lookalike reaches with at least that precision.

    .venv/bin/python benchmarks/copies_peers.py [--full] [--methods sscd,sscd_distilled]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copies_hard as ch
import copies_hard_data as hd
from _report import table, write_section

from lookalike.copies.scoring import calibration
from lookalike.evaluate import metrics

IMMACULATE = Path("/tmp/immvenv/bin/immaculate")
DEPTH = 3
OURS = {"sscd": "sscd", "sscd_distilled": "sscd-mobile"}


def immaculate(method: str, root: Path, refs: dict[str, int], queries: dict[str, int], truth):
    start = time.perf_counter()
    done = subprocess.run(
        [str(IMMACULATE), "--json", "--method", method, str(root)], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"immaculate failed: {done.stderr[-500:]}")
    groups = json.loads(done.stdout)
    predicted = set()
    for group in groups.get("exact", []) + groups.get("near", []):
        names = [Path(p).name for p in group]
        for q in (queries[n] for n in names if n in queries):
            predicted.update((q, refs[n]) for n in names if n in refs)
    correct = sum(1 for q, r in predicted if truth[q] == r)
    positives = int((truth >= 0).sum())
    return {
        "precision": correct / len(predicted) if predicted else float("nan"),
        "recall": correct / positives,
        "images/s": (len(refs) + len(queries)) / seconds,
    }


def recall_at(ids: np.ndarray, scores: np.ndarray, truth: np.ndarray, precision: float) -> float:
    """The most recall lookalike's ranked predictions reach at ``precision`` or better."""
    match = ids == truth[:, None]
    curve = metrics.precision_recall_curve(
        scores.reshape(-1), match.reshape(-1), int((truth >= 0).sum())
    )
    return metrics.recall_at_precision(curve, precision)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the 20,000-reference set")
    parser.add_argument("--methods", default="sscd,sscd_distilled")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not IMMACULATE.exists():
        raise SystemExit(f"{IMMACULATE} missing: see this script's docstring")
    name = "full" if args.full else "small"
    data = hd.build(name)
    items = hd.Items(data)
    out_dir = hd.OUT / name
    vec = ch.Vectors(items, out_dir / "emb")
    queries = data["queries"]
    test = np.array([i for i, q in enumerate(queries) if q["split"] == "test"])
    truth = np.array([q["truth"] for q in queries])[test]
    ref_keys, q_keys = items.keys("r"), [items.keys("q")[i] for i in test]
    folder, marker = out_dir / "peer-folder", out_dir / "peer-folder.done"
    if not marker.exists():  # written once: references and test queries as PNG
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for key in ref_keys + q_keys:
            items.load(key).save(folder / f"{key}.png")
        marker.write_text("")
    refs = {f"{k}.png": i for i, k in enumerate(ref_keys)}
    qs = {f"{k}.png": i for i, k in enumerate(q_keys)}
    verifier = ch.Verifier(items, out_dir / "verify.json")
    rows = []
    for method in args.methods.split(","):
        peer = immaculate(method, folder, refs, qs, truth)
        model = OURS[method]
        cal = calibration(model)
        r = vec.get(model, 288, True, ref_keys, "refs")
        q = vec.get(model, 288, True, q_keys, "queries")
        ids, cos = ch.top_k(q @ r.T, ch.K + 20)
        kth = np.array([cal.kth(row) for row in cos])
        ids, cos = ids[:, : ch.K], cos[:, : ch.K]
        plain = np.stack([cal.probability(c, t) for c, t in zip(cos, kth, strict=True)])
        checked = plain.copy()
        for row, qi in enumerate(q_keys):
            found = verifier.run(qi, [ref_keys[i] for i in ids[row, :DEPTH]])
            for i, (ok, inliers, area, *_) in enumerate(found):
                checked[row, i] = cal.verified_probability(
                    float(cos[row, i]), float(kth[row]), ok, inliers, area
                )
        verifier.save()
        p = peer["precision"]
        rows.append(
            [
                f"immaculate --method {method}",
                f"{p:.3f}",
                f"{peer['recall']:.3f}",
                f"{recall_at(ids, plain, truth, p):.3f}",
                f"{recall_at(ids, checked, truth, p):.3f}",
                f"{peer['images/s']:.1f}",
            ]
        )
        print(rows[-1], flush=True)
    body = "\n".join(
        [
            "## Copy detection beside immaculate (`benchmarks/copies_peers.py`)",
            "",
            f"The `copies-hard` {name} set ({len(ref_keys)} references, {len(q_keys)} test "
            "queries, half with no original indexed), one folder for immaculate; lookalike's "
            "P(copy) from the shipped calibration, read at immaculate's precision (same "
            "model family: `sscd` beside immaculate's `sscd`, `sscd-mobile` beside "
            "`sscd_distilled`).",
            "",
            table(
                [
                    "peer",
                    "its precision",
                    "its recall",
                    "lookalike recall at that precision, --no-verify",
                    "with verification (the default)",
                    "peer images/s",
                ],
                rows,
            ),
            "",
            f"Load average {os.getloadavg()[0]:.1f} on 2 shared cores.",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("copies-peers", body)


if __name__ == "__main__":
    main()
