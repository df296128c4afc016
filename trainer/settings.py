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
corrections and shuffles each arm. Each of those three uses has its own random stream, keyed by the seed only: the K
corrections of a seed are the same in every setting, and the CoT-only arm of `main` and `equal` (C) is the same file,
row for row, whatever the export's corrections are. (With one shared stream, the CoT-only arm's order depended on how
many corrections the export held, and row order alone moved its accuracy by up to 4 points in one seed.)
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
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
    rows: list[dict]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            kind = "corrected_cot" if row.get("source", "").startswith("corrected:") else row["type"]
            out[kind] = out.get(kind, 0) + 1
        return out

    def describe(self) -> str:
        return " + ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(self.counts().items()))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for row in self.rows:
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
    elif setting == "equal":
        arms = {"cot": list(cot), "lema": _stream("kept-cot", seed).sample(cot, len(cot) - k) + chosen}
    else:
        twins = {row.get("correction_id"): row for row in _read(export_dir / "corrected_cot.jsonl")}
        missing = [c.get("correction_id") for c in chosen if c.get("correction_id") not in twins]
        if missing:
            raise SettingError(f"{len(missing)} corrections have no corrected solution in corrected_cot.jsonl "
                               f"(first: {missing[0]!r})")
        arms = {"cot": cot + [twins[c["correction_id"]] for c in chosen], "lema": cot + chosen}
    for name, rows in arms.items():
        _stream(f"order:{name}", seed).shuffle(rows)
    return {name: Arm(name, rows) for name, rows in arms.items()}
