"""Config parsing: structure errors name the file and the key path."""

import pytest

from search.config import ConfigError, load_config, parse_config

BASE = {
    "name": "t",
    "models": [{"name": "base", "path": "a.safetensors"}, {"name": "b", "path": "b.safetensors"}],
    "objective": {"vocabulary": "toyworld", "n": 4, "m": 2},
    "budget": {"trials": 5},
}


def with_(**kw):
    d = {k: v for k, v in BASE.items()}
    d.update(kw)
    return d


def test_defaults_and_hash():
    cfg = parse_config(BASE, root="/tmp/x")
    assert cfg.storage_url == "sqlite:///runs/t/study.db"
    assert cfg.resolve("a.safetensors").as_posix() == "/tmp/x/a.safetensors"
    assert cfg.ordered_models[0].name == "base"
    assert parse_config(with_(base="b")).ordered_models[0].name == "b"
    # budget, workers, sampler may change on resume; the space may not
    same = parse_config(with_(budget={"trials": 50}, sampler="tpe", workers={"count": 2}))
    assert same.config_hash == cfg.config_hash
    other = parse_config(with_(space={"default_bounds": [-0.2, 1.2]}))
    assert other.config_hash != cfg.config_hash


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"sampler": "bayes"}, "t.yaml: sampler: unknown sampler 'bayes'; choose one of auto, cmaes, random, tpe"),
        ({"space": {"bounds": {"IN": [1.0, 0.0]}}}, "t.yaml: space.bounds: bounds for 'IN' [1.0, 0.0] are inverted"),
        ({"space": {"default_bounds": [0.2, 1.0]}}, "must include 0 and 1"),
        ({"space": {"default_bounds": [1.2, -0.3]}}, "space.default_bounds: default_bounds [1.2, -0.3] are inverted"),
        ({"space": {"method": {"name": "ties", "params": {"density": [0.9, 0.1]}}}},
         "space.method: params.density: bounds [0.9, 0.1] are inverted"),
        ({"loras": [{"name": "l", "path": "l.safetensors", "bounds": [1.0, 1.0]}]},
         "loras.0.bounds: bounds [1.0, 1.0] are inverted or empty"),
        ({"sampler_startup": -1}, "t.yaml: sampler_startup:"),
        ({"budget": {}}, "t.yaml: budget: give `trials`, `hours` or both"),
        ({"objective": {"tagger": "clip"}}, "t.yaml: objective: give exactly one of `prompts`"),
        ({"models": [{"name": "a", "path": "x"}]}, "models: a search needs two models, or one model and a LoRA"),
        ({"base": "zzz"}, "base 'zzz' is not one of the models"),
        ({"workers": {"backend": "slurm"}}, "t.yaml: workers.backend:"),
        ({"space": {"components": {"VAE": "nobody"}}}, "space.components.VAE = 'nobody'"),
        ({"bogus": 1}, "t.yaml: bogus: unknown key"),
    ],
)
def test_bad_structure_names_the_key(change, needle):
    with pytest.raises(ConfigError) as info:
        parse_config(with_(**change), source="t.yaml")
    assert needle in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


@pytest.mark.parametrize("name", ["toyworld.yaml", "toyworld-affine.yaml", "sd15_24gb.yaml", "sdxl_24gb.yaml"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    from search.runner import build_prompt_set, check_objective

    path = Path(__file__).resolve().parents[2] / "configs" / name
    cfg = load_config(path)
    check_objective(cfg)
    ps = build_prompt_set(cfg)
    assert len(ps.prompts("search")) == cfg.objective.n
    assert len(ps.prompts("holdout")) == (cfg.objective.holdout or cfg.objective.n)


def test_holdout_size_is_its_own_and_leaves_the_other_splits_disjoint():
    from search.runner import build_prompt_set

    same = build_prompt_set(parse_config(with_(objective={**BASE["objective"], "holdout": 4})))
    assert same.prompts("search") == build_prompt_set(parse_config(BASE)).prompts("search")  # holdout n = default
    ps = build_prompt_set(parse_config(with_(objective={**BASE["objective"], "holdout": 9, "confirm": 3})))
    sizes = {s: len(ps.prompts(s)) for s in ("search", "confirm", "holdout")}
    assert sizes == {"search": 4, "confirm": 3, "holdout": 9}
    texts = [set(p.text for p in ps.prompts(s)) for s in sizes]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    with pytest.raises(ConfigError, match="holdout"):
        parse_config(with_(objective={**BASE["objective"], "holdout": 0}))


def test_confirm_and_method_errors_before_any_trial(tmp_path):
    import pytest

    from search.config import ConfigError, parse_config

    base = {"name": "t", "models": [{"name": "a", "path": "a.safetensors"}, {"name": "b", "path": "b.safetensors"}],
            "objective": {"vocabulary": "toyworld", "n": 4}, "budget": {"trials": 5}}
    with pytest.raises(ConfigError, match="confirm.top_k is 8 but budget.trials is 5"):
        parse_config({**base, "confirm": {"top_k": 8}})
    assert parse_config({**base, "budget": {"trials": 2}}).confirm.top_k == 2  # the default adapts
    with pytest.raises(ConfigError, match="did you mean 'ties'"):
        parse_config({**base, "space": {"method": {"name": "tie"}}})
