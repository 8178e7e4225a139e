"""Model builders per architecture family: ``build(recipe) -> Setup`` reading ``recipe.arch``."""
