"""`mergesearch search` refuses bad configs before any trial; `mergesearch status` reads the storage."""

import pytest
import yaml
from search_helpers import search_config, tiny_sd1

from search.cli import main
from search.config import parse_config
from search.runner import prepare, run_search
from search.workers import EvaluatorSpec


def write(tmp_path, cfg, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory):
    import gzip
    import json

    import torch
    from search_helpers import DATA

    from merge_core import save_safetensors

    with gzip.open(DATA / "keys_sdxl.json.gz", "rt") as f:
        keys = json.load(f)["keys"]
    sd = {k: torch.zeros(tuple(min(x, 2) for x in s)) for k, (s, _d, opt) in keys.items()
          if not opt and not k.startswith("model_ema.")}
    path = tmp_path_factory.mktemp("xl") / "xl.safetensors"
    save_safetensors(sd, path)
    return path


@pytest.mark.parametrize("case", ["missing file", "mixed families", "unknown sampler", "inverted bounds",
                                  "unreachable storage", "unknown block", "unknown tagger"])
def test_bad_config_is_one_clear_error_before_any_trial(case, tmp_path, tiny_models, sdxl_file, capsys):
    models = dict(tiny_models)
    over, needle = {}, ""
    if case == "missing file":
        models["a"] = tmp_path / "nowhere.safetensors"
        needle = "models.a: no such file"
    elif case == "mixed families":
        models["b"] = sdxl_file
        needle = "different families (base=sd1, a=sd1, b=sdxl)"
    elif case == "unknown sampler":
        over, needle = {"sampler": "bayes"}, "sampler: unknown sampler 'bayes'; choose one of auto, cmaes, random, tpe"
    elif case == "inverted bounds":
        over = {"space": {"parametrisation": "affine", "bounds": {"IN": [1.2, -0.3]}}}
        needle = "space.bounds: bounds for 'IN' [1.2, -0.3] are inverted"
    elif case == "unreachable storage":
        over = {"storage": "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"}
        needle = "storage postgresql+psycopg://postgres@127.0.0.1:9/nowhere: cannot connect"
    elif case == "unknown block":
        over = {"space": {"groups": {"IN": ["IN00-IN13"], "REST": ["M00", "OUT00-OUT11"]}}}
        needle = "space.groups.IN: range 'IN00-IN13' names a block"
    elif case == "unknown tagger":
        over = {"objective": {"vocabulary": "toyworld", "tagger": "nope"}}
        needle = "objective.tagger: unknown tagger 'nope'"
    cfg = search_config(tmp_path, models, **over)
    path = write(tmp_path, cfg)
    assert main(["search", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs" / "t" / "run.json").exists()  # nothing started


def test_status_reads_the_storage(tmp_path, tiny_models, capsys):
    cfg = parse_config(search_config(tmp_path, tiny_models, budget={"trials": 8}, pruner={"enabled": False}))
    run_search(prepare(cfg, evaluator=EvaluatorSpec(factory="search_fakes:FakeEvaluator")))
    assert main(["status", str(tmp_path / "runs" / "t")]) == 0
    out = capsys.readouterr().out
    assert "done 8/8 (complete 8, pruned 0, failed 0, retried 0) | running 0 | best 0." in out
    assert "parent:base" in out and "uniform" in out and "trials/h" in out
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    assert "--fork" in out and "resumes" in out


def test_tiny_sd1_is_a_sd1_checkpoint(tmp_path):
    from merge_core import open_checkpoint

    assert open_checkpoint(tiny_sd1(tmp_path / "x.safetensors", seed=3)).family.value == "sd1"
