"""search.review: what the user does with a run — dashboard, report, export with provenance."""

from search.review.run import ReviewError, RunFolder, load_run
from search.review.trials import pick_trial, trial_recipe, trial_table

__all__ = ["ReviewError", "RunFolder", "load_run", "pick_trial", "trial_recipe", "trial_table"]
