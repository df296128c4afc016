"""The paper's comparisons, each a named construction of two training sets (arms) from one export.

An export (`lema export`) holds `cot.jsonl` (reference solutions and verified sampled ones), `correction.jsonl`
(one accepted correction per mistake path) and `corrected_cot.jsonl` (each correction's whole corrected solution,
a correct solution of the same question). Let C be the CoT rows and K = min(#corrections, ratio x |C|) corrections
drawn for the seed (ratio 0.4 by default, like the paper's 12.5K corrections on 32.4K CoT for GSM8K):

- **main** (the paper's Table 1): CoT-only = C; LEMA = C + the K corrections. LEMA has more data: the question is
  whether corrections *added* to all the CoT data help.
- **equal** (the paper's data-size control, LEMA-32K): both arms have |C| rows; LEMA = the K corrections + |C| - K
  CoT rows drawn at random, so corrections are up to `ratio` of the mix.
- **matched** (the paper's CoT-45K control): CoT-only = C + the corrected solution of each of the K corrections'
  questions; LEMA = C + the K corrections. Both arms cover the same questions with the same number of rows, so a
  LEMA win here is not "the corrections pick harder questions" but "the correction format teaches something".

Both arms of a seed train for the recipe's same `max_steps` with the same seed; the seed also draws the K
corrections and orders each arm. The harness trains each arm on its common-random-numbers stream (`crn_stream`):
the same adapter initialisation (TRL seeds it) and the shared CoT rows in the same order in both arms, the
corrections at seed-fixed slots between them. Each use of the seed has its own random stream: the K corrections of
a seed are the same in every setting, and the CoT-only arm of `main` and `equal` (C) is the same file,
row for row, whatever the export's corrections are. (With one shared stream, the CoT-only arm's order depended on how
many corrections the export held, and row order alone moved its accuracy by up to 4 points in one seed.)
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lema.core.errors import InvalidInput

Setting = Literal["main", "equal", "matched"]
SETTINGS: tuple[str, ...] = ("main", "equal", "matched")


class SettingError(InvalidInput):
    """An export that cannot build the asked setting; the message says what is missing."""


@dataclass
class Arm:
    name: str  # "cot" | "lema"
    rows: list[dict]  # the arm's distinct rows, shuffled by the seed
    plan: Plan | None = None  # how they are built from the shared CoT rows (for `stream`)
    seed: int = 0

    def stream(self, total_rows: int) -> list[dict]:
        """The rows in training order for a run of `total_rows` rows, common random numbers (`crn_stream`)."""
        if self.plan is None:
            raise SettingError("this arm was built without a plan")
        return crn_stream(self.plan, self.seed, total_rows)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            kind = "corrected_cot" if row.get("source", "").startswith("corrected:") else row["type"]
            out[kind] = out.get(kind, 0) + 1
        return out

    def describe(self) -> str:
        return " + ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(self.counts().items()))

    def write(self, path: Path, total_rows: int | None = None) -> Path:
        """The arm's rows as a training file: its distinct rows, or with `total_rows` the common-random-numbers
        stream of exactly that many rows (a recipe with `shuffle: false` trains them in this order)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for row in (self.rows if total_rows is None else self.stream(total_rows)):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path


def _read(path: Path) -> list[dict]:
    if not path.exists():
        raise SettingError(f"{path} is missing: export again with this version of `lema export`")
    return [json.loads(line) for line in path.open() if line.strip()]


def _stream(use: str, seed: int) -> random.Random:
    """One independent random stream per use of the seed (see the module docstring)."""
    return random.Random(f"lema-setting:{use}:{seed}")


def build_arms(export_dir: Path, setting: str, correction_ratio: float = 0.4, seed: int = 0) -> dict[str, Arm]:
    """The two arms of `setting` for one seed, from the export folder."""
    if setting not in SETTINGS:
        raise SettingError(f"setting must be one of {', '.join(SETTINGS)} (got {setting!r})")
    if not 0 < correction_ratio <= 1:
        raise SettingError(f"correction_ratio must lie in (0, 1] (got {correction_ratio})")
    cot = _read(export_dir / "cot.jsonl")
    corrections = _read(export_dir / "correction.jsonl")
    if not cot:
        raise SettingError(f"{export_dir} has no CoT rows")
    if not corrections:
        raise SettingError(f"{export_dir} has no accepted corrections: nothing to compare")
    k = min(len(corrections), math.floor(correction_ratio * len(cot)))
    if k == 0:
        raise SettingError(f"{len(cot)} CoT rows x ratio {correction_ratio} leaves no room for a correction")
    chosen = _stream("corrections", seed).sample(corrections, k)
    if setting == "main":
        arms = {"cot": list(cot), "lema": cot + chosen}
        plan = {"cot": Plan(cot), "lema": Plan(cot, inserted=chosen)}
    elif setting == "equal":
        dropped = _stream("dropped-cot", seed).sample(range(len(cot)), k)
        gone = set(dropped)
        kept = [row for i, row in enumerate(cot) if i not in gone]
        arms = {"cot": list(cot), "lema": kept + chosen}
        plan = {"cot": Plan(cot), "lema": Plan(cot, replaced=dict(zip(dropped, chosen)))}
    else:
        twins = {row.get("correction_id"): row for row in _read(export_dir / "corrected_cot.jsonl")}
        missing = [c.get("correction_id") for c in chosen if c.get("correction_id") not in twins]
        if missing:
            raise SettingError(f"{len(missing)} corrections have no corrected solution in corrected_cot.jsonl "
                               f"(first: {missing[0]!r})")
        twin_rows = [twins[c["correction_id"]] for c in chosen]
        arms = {"cot": cot + twin_rows, "lema": cot + chosen}
        # The twin of correction j takes the slot of correction j: the arms differ only in what fills it.
        plan = {"cot": Plan(cot, inserted=twin_rows), "lema": Plan(cot, inserted=chosen)}
    for name, rows in arms.items():
        _stream(f"order:{name}", seed).shuffle(rows)
    return {name: Arm(name, rows, plan[name], seed) for name, rows in arms.items()}


@dataclass
class Plan:
    """How an arm is built from the shared CoT rows, for common random numbers: `inserted` rows go into seed-fixed
    slots between them (the same slots in every arm of a seed, the j-th inserted row of each arm in the j-th slot),
    or `replaced` maps the index of a CoT row to the row that takes its place."""

    shared: list[dict]
    inserted: list[dict] = field(default_factory=list)
    replaced: dict[int, dict] = field(default_factory=dict)


def crn_stream(plan: Plan, seed: int, total_rows: int) -> list[dict]:
    """The `total_rows` training rows of an arm, in the order they train (common random numbers, Dodge et al. 2020:
    weight initialisation and data order move fine-tuning results as much as each other, so both arms of a seed get
    the same ones and their difference loses that noise).

    Epoch e: the shared CoT rows in a permutation drawn for (seed, e) alone; an arm's inserted rows go into slots
    drawn for (seed, e, how many) in an order drawn for (seed, e); an arm's replaced CoT rows keep their position
    with the new row in it. So two arms of a seed see the shared rows in the same relative order and differ only
    in the slots where the corrections (or their twins) sit. Epochs repeat until `total_rows` (max_steps x batch)."""
    if total_rows < 1:
        raise ValueError("total_rows must be at least 1")
    if not plan.shared:
        raise SettingError("an arm needs at least one CoT row")
    out: list[dict] = []
    epoch = 0
    while len(out) < total_rows:
        order = list(range(len(plan.shared)))
        _stream(f"crn:shared:{epoch}", seed).shuffle(order)
        rows = [plan.replaced.get(i, plan.shared[i]) for i in order]
        if plan.inserted:
            k = len(plan.inserted)
            length = len(rows) + k
            slots = set(_stream(f"crn:slots:{epoch}:{k}:{len(rows)}", seed).sample(range(length), k))
            extra = list(range(k))
            _stream(f"crn:inserted:{epoch}:{k}", seed).shuffle(extra)
            merged, shared_rows, extra_rows = [], iter(rows), iter(plan.inserted[j] for j in extra)
            for position in range(length):
                merged.append(next(extra_rows) if position in slots else next(shared_rows))
            rows = merged
        out.extend(rows)
        epoch += 1
    return out[:total_rows]
