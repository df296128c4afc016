"""The base model's validation metrics, which the promotion gate compares an adapter against.

Measured by the trainer itself (the endpoint serves but does not evaluate) on the same validation problems the
adapter was scored on (the recipe's eval settings, recorded with the adapter), once per base model and settings,
and kept in the registry folder so that a restart does not measure again.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

from lema.trainer.recipe import EvalSettings, RecipeError, load_recipe
from lema.trainer.registry import AdapterRecord


def eval_settings_of(record: AdapterRecord) -> EvalSettings:
    """The evaluation an adapter's metrics come from: its recipe's, else the defaults."""
    try:
        return load_recipe(record.config_yaml or None).eval
    except RecipeError:
        return EvalSettings()


class BaseMetrics:
    def __init__(self, root: Path):
        self.path = Path(root) / "base-metrics.json"
        self._lock = threading.Lock()

    @staticmethod
    def key(base_model: str, settings: EvalSettings) -> str:
        return json.dumps([base_model, settings.validation_problems, settings.seed, settings.max_tokens])

    def get(self, base_model: str, settings: EvalSettings) -> dict[str, float]:
        """Cached or measured now (blocking: call it from a worker thread)."""
        from lema.core.model_resolve import resolve_model
        from lema.trainer.evaluate import evaluate

        key = self.key(base_model, settings)
        with self._lock:  # one measurement at a time; the second caller finds the first one's result
            known = self._read()
            if key in known:
                return known[key]
            result = asyncio.run(evaluate(resolve_model(base_model), settings, split="validation"))
            known[key] = result.metrics(prefix="validation_")
            tmp = self.path.with_suffix(".tmp")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(known, indent=2))
            os.replace(tmp, self.path)
            return known[key]

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
