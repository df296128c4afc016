"""The base model's outcomes on the promotion gate's problems, which the gate pairs an adapter's with.

Measured by the trainer itself (the endpoint serves but does not evaluate) on the same problems the adapter was gated
on (the recipe's eval settings, recorded with the adapter: its `gate` split), once per base model and settings, and
kept in the registry folder (base-outcomes.json) so that a restart does not measure again.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

from lema.trainer.gate import GateError, Outcomes
from lema.trainer.recipe import EvalSettings, RecipeError, load_recipe
from lema.trainer.registry import AdapterRecord


def eval_settings_of(record: AdapterRecord) -> EvalSettings:
    """The evaluation an adapter's metrics come from: its recipe's, else the defaults."""
    try:
        return load_recipe(record.config_yaml or None).eval
    except RecipeError:
        return EvalSettings()


class BaseOutcomes:
    def __init__(self, root: Path):
        self.path = Path(root) / "base-outcomes.json"
        self._lock = threading.Lock()

    @staticmethod
    def key(base_model: str, settings: EvalSettings) -> str:
        return json.dumps([base_model, settings.validation_problems, settings.gate_problems, settings.seed,
                           settings.max_tokens])

    def cached(self, base_model: str, settings: EvalSettings) -> Outcomes | None:
        """The kept outcomes, or None when they were never measured (or the entry is damaged: measured again)."""
        try:
            return Outcomes.from_json(self._read().get(self.key(base_model, settings)))
        except GateError:
            return None

    def get(self, base_model: str, settings: EvalSettings) -> Outcomes:
        """Cached or measured now (blocking: call it from a worker thread)."""
        from lema.core.model_resolve import resolve_model
        from lema.trainer.evaluate import evaluate

        key = self.key(base_model, settings)
        with self._lock:  # one measurement at a time; the second caller finds the first one's result
            cached = self.cached(base_model, settings)
            if cached is not None:
                return cached
            known = self._read()
            # Accuracy only: the reference log-likelihood is a second pass the gate does not read.
            result = asyncio.run(evaluate(resolve_model(base_model), settings.model_copy(
                update={"reference_logprob": False}), split="gate"))
            outcomes = Outcomes.of(result)
            known[key] = outcomes.to_json()
            tmp = self.path.with_suffix(".tmp")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(known))
            os.replace(tmp, self.path)
            return outcomes

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
