"""render.compile / overlap / batch: validated up front, never part of what a study is."""

import pytest

from search.config import ConfigError, parse_config
from search.review.provenance import benchmark_hash

BASE = {
    "name": "t",
    "models": [{"name": "base", "path": "a.safetensors"}, {"name": "b", "path": "b.safetensors"}],
    "objective": {"vocabulary": "toyworld", "n": 4, "m": 2, "render": {"steps": 3}},
    "budget": {"trials": 5},
}


def _with_render(**render):
    return {**BASE, "objective": {**BASE["objective"], "render": {"steps": 3, **render}}}


def test_speed_settings_change_neither_the_study_identity_nor_the_render_settings():
    plain = parse_config(BASE)
    fast = parse_config(_with_render(compile="reduce-overhead", overlap="on", batch=32))
    assert fast.objective.render.compile == "reduce-overhead" and fast.objective.render.batch == 32
    assert fast.config_hash == plain.config_hash  # a study may be resumed on another device / compile mode
    assert fast.objective.render.settings() == plain.objective.render.settings() == {"steps": 3, "cfg": 7.0}
    dumped = [c.model_dump(mode="json") for c in (plain, fast)]
    assert benchmark_hash(dumped[0]) == benchmark_hash(dumped[1])
    slower = parse_config(_with_render(steps=4))
    assert slower.config_hash != plain.config_hash
    assert benchmark_hash(slower.model_dump(mode="json")) != benchmark_hash(dumped[0])


@pytest.mark.parametrize("render, needle", [
    ({"compile": "reduce-overhed"}, "objective.render.compile: render.compile: unknown mode or backend "
                                    "'reduce-overhed' (did you mean 'reduce-overhead'?)"),
    ({"overlap": "maybe"}, "objective.render.overlap"),
    ({"batch": 0}, "objective.render.batch"),
])
def test_bad_speed_settings_are_config_errors(render, needle):
    with pytest.raises(ConfigError) as info:
        parse_config(_with_render(**render), source="t.yaml")
    assert needle in str(info.value)
