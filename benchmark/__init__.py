"""benchmark: what "better" means. Tag vocabularies, prompt sets, rendering, taggers, scores."""

from benchmark.contact_sheet import contact_sheet
from benchmark.errors import BenchmarkError
from benchmark.evaluate import Benchmark
from benchmark.prompts import Prompt, PromptSet, load_prompt_set, make_prompt_set
from benchmark.renderer import Renderer, read_checkpoint
from benchmark.score import CategoryScore, PromptScore, Score, bootstrap_ci, score_tags
from benchmark.settings import RenderSettings
from benchmark.taggers import TAGGERS, Tagger, get_tagger
from benchmark.vocabulary import Vocabulary, load_vocabulary

__all__ = [
    "Benchmark", "BenchmarkError", "CategoryScore", "Prompt", "PromptScore", "PromptSet", "RenderSettings",
    "Renderer", "Score", "TAGGERS", "Tagger", "Vocabulary", "bootstrap_ci", "contact_sheet", "get_tagger",
    "load_prompt_set", "load_vocabulary", "make_prompt_set", "read_checkpoint", "score_tags",
]
