"""Data verbs: `extes split` (deterministic, scene-stratified train/valid/test) and `extes convert`."""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from extes.dialogue import (
    Dialogue,
    atomic_write,
    file_sha256,
    iter_data_files,
    load_dialogues,
    write_extes_json,
    write_jsonl,
)

SPLITS = ("train", "valid", "test")


def parse_ratios(text: str) -> tuple[float, float, float]:
    parts = text.replace("/", ":").split(":")
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--ratios {text!r}: expected three numbers like 8:1:1") from None
    if len(vals) != 3 or any(v < 0 for v in vals) or sum(vals) <= 0:
        raise ValueError(f"--ratios {text!r}: expected three non-negative numbers like 8:1:1")
    total = sum(vals)
    return tuple(v / total for v in vals)  # type: ignore[return-value]


@dataclass
class Split:
    train: list[Dialogue]
    valid: list[Dialogue]
    test: list[Dialogue]

    def parts(self) -> dict[str, list[Dialogue]]:
        return {"train": self.train, "valid": self.valid, "test": self.test}


def split_dialogues(dialogues: list[Dialogue], ratios=(0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """Split by dialogue, stratified by scene, deterministic for a seed whatever the input order.

    Dialogues are grouped by scene (each group shuffled with the seed) and dealt out one by one to the
    split furthest below its target share, so every split gets a share of every large scene and the
    totals follow the ratios as closely as whole dialogues allow.
    """
    rng = random.Random(seed)
    by_scene: dict[str, list[Dialogue]] = defaultdict(list)
    for d in sorted(dialogues, key=lambda d: d.id):
        by_scene[d.scene].append(d)
    scenes = sorted(by_scene)
    rng.shuffle(scenes)
    order: list[Dialogue] = []
    for scene in scenes:
        group = by_scene[scene]
        rng.shuffle(group)
        order.extend(group)
    out: dict[str, list[Dialogue]] = {s: [] for s in SPLITS}
    for i, d in enumerate(order, 1):
        # deficit = target count so far minus actual count; pick the largest (ties: train, valid, test)
        name = max(SPLITS, key=lambda s: (ratios[SPLITS.index(s)] * i - len(out[s]), -SPLITS.index(s)))
        out[name].append(d)
    return Split(**out)



def write_split(split: Split, out_dir: str | Path, sources: list[str | Path], seed: int, ratios) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "seed": seed,
        "ratios": dict(zip(SPLITS, [round(r, 6) for r in ratios])),
        "counts": {name: len(ds) for name, ds in split.parts().items()},
        "scenes": {name: dict(sorted(_count(ds).items())) for name, ds in split.parts().items()},
        "sources": [{"path": str(f), "sha256": file_sha256(f)} for src in sources for f in iter_data_files(src)],
        "ids": {name: [d.id for d in ds] for name, ds in split.parts().items()},
    }
    for name, ds in split.parts().items():
        write_jsonl(ds, out / f"{name}.jsonl")
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return out


def _count(ds: list[Dialogue]) -> dict[str, int]:
    c: dict[str, int] = defaultdict(int)
    for d in ds:
        c[d.scene] += 1
    return c


def configure_split(p) -> None:
    p.add_argument("paths", nargs="+", help="files or folders to split")
    p.add_argument("--out", required=True, help="folder for train.jsonl, valid.jsonl, test.jsonl, manifest.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratios", default="8:1:1", help="train:valid:test (default 8:1:1)")
    p.add_argument("--lenient", action="store_true", help="skip bad records and report them")
    p.add_argument("--merge-consecutive", action="store_true")


def run_split(args) -> int:
    ratios = parse_ratios(args.ratios)
    skipped: list[str] = []
    dialogues = load_dialogues(args.paths, lenient=args.lenient, merge_consecutive=args.merge_consecutive,
                               skipped=skipped)
    if not dialogues:
        raise ValueError(f"no dialogues found in {', '.join(args.paths)}")
    split = split_dialogues(dialogues, ratios, args.seed)
    out = write_split(split, args.out, args.paths, args.seed, ratios)
    counts = ", ".join(f"{k} {len(v)}" for k, v in split.parts().items())
    print(f"wrote {out}: {counts}" + (f" (skipped {len(skipped)} bad records)" if skipped else ""))
    return 0


def configure_convert(p) -> None:
    p.add_argument("paths", nargs="+", help="input files or folders")
    p.add_argument("--to", choices=("jsonl", "extes"), required=True, help="output format")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--lenient", action="store_true", help="skip bad records and report them")
    p.add_argument("--merge-consecutive", action="store_true", help="merge consecutive same-speaker utterances")


def run_convert(args) -> int:
    skipped: list[str] = []
    dialogues = load_dialogues(args.paths, lenient=args.lenient, merge_consecutive=args.merge_consecutive,
                               skipped=skipped)
    writer = write_jsonl if args.to == "jsonl" else write_extes_json
    path = writer(dialogues, args.out)
    print(f"wrote {len(dialogues)} dialogues to {path}")
    if skipped:
        print(f"skipped {len(skipped)} bad record(s):", file=sys.stderr)
        for reason in skipped[:20]:
            print(f"  {reason}", file=sys.stderr)
    return 0
