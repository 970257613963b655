"""`mergesearch ARGS` as a real process, with the stand-in evaluator (search_fakes.FakeEvaluator) in
place of rendering: for tests and scripts that signal or kill a driver.

    python tests/search/search_cli_driver.py search CONFIG [options]
FAKE_EVALUATOR='{"batches": 2, "batch_seconds": 0.2}' sets the evaluator's keyword arguments."""

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]
# Ray workers import search_fakes too: they inherit this environment
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), str(HERE), os.environ.get("PYTHONPATH", "")])

import search.runner  # noqa: E402
from search.workers import EvaluatorSpec  # noqa: E402

KWARGS = json.loads(os.environ.get("FAKE_EVALUATOR", "{}"))
search.runner.default_evaluator = lambda *a, **k: EvaluatorSpec(factory="search_fakes:FakeEvaluator",
                                                                kwargs=KWARGS, torch_threads=1)

from search.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
