"""The lema-tiny recipe (recipe.yaml) as typed settings. The code defaults are the shipped YAML's values (a test keeps
them equal), so a recipe that leaves a key out gets what lema-tiny was trained with."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field

DEFAULT_RECIPE = Path(__file__).with_name("recipe.yaml")


class TokenizerRecipe(BaseModel):
    vocab_size: int = 1024
    train_problems: int = 5000  # synthetic problems the BPE is trained on
    numbers: str = Field("whole", pattern="^(digits|whole)$")  # one token per digit, or per number
    correction_fraction: float = Field(0.3, ge=0.0, le=1.0)  # share of those problems also written as a correction


class ModelRecipe(BaseModel):
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4  # head size = hidden_size / num_heads; vLLM's CPU attention needs >= 32
    intermediate_size: int = 384
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True


class Stage(BaseModel):
    """One curriculum stage: fresh problems (never repeated) of these step counts and number range,
    with fractions of the batches being arithmetic and copy drills (see drills.py)."""

    name: str
    steps: tuple[int, int] = (2, 6)
    max_value: int = 20
    train_steps: int
    drill_fraction: float = Field(0.0, ge=0.0, le=1.0)  # arithmetic drill batches
    copy_fraction: float = Field(0.0, ge=0.0, le=1.0)  # copy drill batches (questions)
    random_copy_fraction: float = Field(0.0, ge=0.0, le=1.0)  # copy drill batches (random tokens)
    correction_fraction: float = Field(0.0, ge=0.0, le=1.0)  # correction-format batches (wrong solution -> correction)


class TrainingRecipe(BaseModel):
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    threads: int = 1
    loss_on: str = Field("assistant", pattern="^(assistant|all)$")


class EvalRecipe(BaseModel):
    every: int = 150  # optimizer steps between checkpoint evaluations
    start_step: int = 1050  # no evaluation before this step (early checkpoints are far from the band)
    problems: int = 96  # validation problems (train split, excluded from training data)
    stop_at_accuracy: float = 0.55  # stop once validation accuracy reaches this (the model is meant to err)
    max_new_tokens: int = 200


class Recipe(BaseModel):
    seed: int = 0
    tokenizer: TokenizerRecipe = TokenizerRecipe()
    model: ModelRecipe = ModelRecipe()
    training: TrainingRecipe = TrainingRecipe()
    curriculum: list[Stage]
    eval: EvalRecipe = EvalRecipe()

    @property
    def total_steps(self) -> int:
        return sum(s.train_steps for s in self.curriculum)


def load_recipe(path: str | Path = DEFAULT_RECIPE) -> Recipe:
    return Recipe.model_validate(yaml.safe_load(Path(path).read_text()))
