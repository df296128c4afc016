"""lema-tiny's recipe loader."""

from __future__ import annotations


def test_the_recipe_code_defaults_are_the_shipped_yaml() -> None:
    """A recipe that leaves a key out gets what lema-tiny was trained with (issue 16: they used to disagree)."""
    import yaml

    from lema.tiny.recipe import DEFAULT_RECIPE, Recipe, load_recipe

    shipped = load_recipe()
    raw = yaml.safe_load(DEFAULT_RECIPE.read_text())
    from_defaults = Recipe(curriculum=raw["curriculum"])
    assert from_defaults.model_dump() == shipped.model_dump()
