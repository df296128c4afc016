"""Synthetic GSM8K-style problems with exact programs, gold solutions and step-level checking."""

from lema.core.synthetic.check import check_solution_steps, final_answer, parse_equation
from lema.core.synthetic.families import FAMILIES, OOD_FAMILIES, TRAIN_FAMILIES
from lema.core.synthetic.generate import SyntheticProblem, canonical_key, generate, split_of
from lema.core.synthetic.program import Operand, Program, ProgramError, Step
from lema.core.synthetic.story import Limits

__all__ = [
    "FAMILIES", "OOD_FAMILIES", "TRAIN_FAMILIES", "Limits", "Operand", "Program", "ProgramError", "Step",
    "SyntheticProblem", "canonical_key", "check_solution_steps", "final_answer", "generate", "parse_equation",
    "split_of",
]
