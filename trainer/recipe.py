"""A training recipe: every knob of a QLoRA run in one typed, YAML-loadable model (torchtune-style).

Defaults are the LEMA paper's (QLoRA nf4, r=64, alpha=16, dropout 0.05, lr 2e-4, constant schedule,
max_grad_norm 0.3, loss on the output only). An invalid field is rejected with its name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from lema.core.errors import InvalidInput

CONFIGS = Path(__file__).resolve().parent / "configs"


class RecipeError(InvalidInput):
    """A recipe that cannot run; the message names the offending field."""


class QuantizationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    # float32 on CPU: bf16 compute made a QLoRA step ~10x slower on this CPU (no native bf16; docs/development.md, 'The CPU stack').
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # The dtype the packed 4-bit weights are stored in (bitsandbytes' bnb_4bit_quant_storage; its default is uint8).
    # FSDP flattens each wrapped block's parameters into one tensor of one dtype and shards that, so FSDP-QLoRA
    # (deploy/accelerate/fsdp_qlora.yaml) needs the quantised weights stored in the dtype of the unquantised ones:
    # bfloat16, with compute_dtype bfloat16. A floating storage dtype also loads the unquantised weights in it.
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(default=64, ge=1, le=512)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    # Modules trained in full beside the adapter and saved with it (peft's modules_to_save), e.g. the embeddings
    # ["embed_tokens", "lm_head"]: Physics of LM 2.2 found error correction learnable by LoRA only at high rank with
    # trainable embeddings.
    modules_to_save: list[str] | None = None


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    problems: int = Field(default=500, ge=1, description="reported (test) problems")
    split: Literal["test", "ood"] = "test"
    validation_problems: int = Field(default=200, ge=1, description="validation problems: checkpoint choice, "
                                                                    "the adapter's validation metrics")
    gate_problems: int = Field(default=0, ge=0, le=100_000,
                               description="validation problems after the first validation_problems (disjoint from "
                                           "them) that only the promotion gate grades on; 0: the gate uses the "
                                           "validation problems themselves, which it refuses when a checkpoint was "
                                           "chosen on them (select_checkpoint: best_validation)")
    hard_problems: int = Field(default=0, ge=0, description="problems of the hard split (more steps than any "
                                                             "training problem), reported beside the test split "
                                                             "by the harness; 0: not evaluated")
    reference_logprob: bool = Field(default=True, description="also score the log-likelihood of every problem's "
                                                              "reference solution (a lower-variance paired "
                                                              "measure; one forward pass per problem)")
    seed: int = 2026
    max_tokens: int = Field(default=200, ge=1)
    batch_size: int = Field(default=32, ge=1)
    threads: int | None = Field(default=None, ge=1, description="CPU threads for evaluation (default: 1)")


class PreferenceSettings(BaseModel):
    """The step-level preference arm (beyond the paper): DPO on (chosen = the corrected continuation, rejected = the
    model's own continuation) pairs at the first wrong step, on top of the CoT-only adapter."""

    model_config = ConfigDict(extra="forbid")
    max_steps: int = Field(default=20, ge=1)
    # 5e-4 collapsed validation accuracy (59.6% -> 35.8% on lema-tiny; bench/RESULTS.md, 'Why the DPO arm
    # collapsed'); 1e-4 with the first wrong step as the rejected side leaves it level (60.4%).
    learning_rate: float = Field(default=1e-4, gt=0, le=1)
    rejected: Literal["first_step", "continuation"] = Field(
        default="first_step", description="the rejected side of a pair: the model's first wrong step only (no end "
                                          "token), or its whole wrong continuation (mostly correct arithmetic on "
                                          "wrong numbers: DPO then unlearns arithmetic)")
    beta: float = Field(default=0.1, gt=0)
    loss_type: list[Literal["sigmoid", "ipo", "apo_zero", "apo_down", "sft"]] = Field(
        default_factory=lambda: ["sigmoid", "sft"], description="TRL DPO losses, summed (sigmoid + sft: RPO-style)")
    batch_size: int = Field(default=16, ge=1)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "qlora"
    base_model: str = "lema-tiny"
    quantization: QuantizationConfig = QuantizationConfig()
    lora: LoraSettings = LoraSettings()
    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float = Field(default=0.3, gt=0)
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1, description="overrides epochs when > 0; comparisons need it: both "
                                                          "arms then take the same number of optimizer steps")
    select_checkpoint: Literal["last", "best_validation"] = Field(
        default="last", description="the adapter a run keeps: its last checkpoint, or the saved checkpoint with the "
                                    "best validation accuracy (never the test problems)")
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    micro_batch_size: int | None = Field(
        default=None, ge=1, description="rows per forward pass (default: batch_size); must divide batch_size. The "
                                        "optimizer still steps on batch_size x grad_accum rows (gradient "
                                        "accumulation over the micro-batches): this bounds the training memory, "
                                        "which the rows of one forward pass set")
    max_seq_len: int = Field(default=512, ge=16)
    packing: bool = False
    group_by_length: bool = Field(default=True, description="batch rows of similar length together (the paper's "
                                                            "script does): less padding when long corrections mix "
                                                            "with short CoT rows")
    shuffle: bool = Field(default=True, description="draw the rows in a seeded random order (grouped by length "
                                                    "with group_by_length); false: train them in the order the "
                                                    "file gives (the harness writes each arm's common-random-"
                                                    "numbers stream)")
    completion_only_loss: bool = True
    seed: int = 0
    save_steps: int = Field(default=50, ge=1, description="checkpoint interval (a killed run resumes from the last)")
    logging_steps: int = Field(default=5, ge=1)
    threads: int | None = Field(default=None, ge=1, description="CPU threads (default: all)")
    gradient_checkpointing: bool = Field(default=False, description="recompute activations in the backward pass: "
                                                                    "off on a CPU (it made QLoRA much slower), on "
                                                                    "for a 70B base on GPUs")
    eval: EvalSettings = EvalSettings()
    preference: PreferenceSettings = PreferenceSettings()

    @field_validator("micro_batch_size")
    @classmethod
    def _micro_batch_divides_batch(cls, value: int | None, info: ValidationInfo) -> int | None:
        batch = info.data.get("batch_size")
        if value is not None and batch is not None and batch % value:
            raise ValueError(f"must divide batch_size {batch} (got {value})")
        return value

    @property
    def micro_batch(self) -> int:
        """Rows per forward pass."""
        return min(self.micro_batch_size or self.batch_size, self.batch_size)

    @property
    def accumulation_steps(self) -> int:
        """Forward passes per optimizer step: grad_accum x the micro-batches of one batch."""
        return self.grad_accum * (self.batch_size // self.micro_batch)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def load_recipe(source: str | Path | None = None, overrides: dict | None = None, allow_paths: bool = True) -> Recipe:
    """A recipe from a name under trainer/configs/, a YAML file path, a YAML string, or defaults.

    `allow_paths=False` (what a server does with a client's text): a name from trainer/configs/ or inline YAML only;
    no file outside the recipe folder is ever opened, so no error can echo one."""
    data: dict = {}
    if source:
        text = str(source)
        path = Path(text)
        named = CONFIGS / f"{text}.yaml"
        # Inline YAML (several lines, or longer than a file name may be) is never looked up as a file.
        inline = "\n" in text or len(text) > 255
        if not inline and RECIPE_NAME.fullmatch(text) and _is_file(named):
            data = yaml.safe_load(named.read_text()) or {}
        elif not inline and allow_paths and (path.suffix in (".yaml", ".yml") or _is_file(path)):
            if not path.exists():
                raise RecipeError(f"recipe file {path} does not exist")
            data = yaml.safe_load(path.read_text()) or {}
        else:
            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise RecipeError(f"the recipe is not valid YAML: {str(exc)[:300]}") from None
        if isinstance(data, str) and not allow_paths:
            names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
            raise RecipeError(f"{text[:80]!r} is neither a recipe name ({names}) nor an inline YAML mapping (a file "
                              "path is not accepted here)")
        if not isinstance(data, dict):
            raise RecipeError("the recipe must be a YAML mapping")
    data = _merge(data, overrides or {})
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])[:80] or "recipe"
        raise RecipeError(f"invalid recipe field '{where}': {first['msg'][:200]}") from exc


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system
        return False


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
