import numpy as np
import pytest
import torch

from benchmark.toyworld import world


def test_same_seed_same_pixels_and_different_seed_differs():
    idx = world.sample_indices(16, seed=5)
    assert np.array_equal(idx, world.sample_indices(16, seed=5))
    a, b = world.draw_batch(idx, seed=1), world.draw_batch(idx, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, world.draw_batch(idx, seed=2))
    assert a.shape == (16, 3, world.IMAGE_SIZE, world.IMAGE_SIZE) and 0 <= a.min() and a.max() <= 1


def test_tags_are_drawn_where_and_how_they_say():
    scene = {"colour": "red", "shape": "square", "size": "large", "position": "top left",
             "background": "black background"}
    img = world.draw_batch(world.scenes_to_indices([scene]), seed=0)[0]
    top_left, bottom_right = img[:, 4:12, 4:12].mean((1, 2)), img[:, 20:28, 20:28].mean((1, 2))
    assert top_left[0] > 0.7 and top_left[1:].max() < 0.25  # red shape where asked
    assert bottom_right.max() < 0.15  # black background elsewhere
    small = world.draw_batch(world.scenes_to_indices([{**scene, "size": "small"}]), seed=0)[0]
    assert (small[0] > 0.5).sum() < (img[0] > 0.5).sum() / 2


def test_every_tag_of_the_vocabulary_is_drawable_and_round_trips():
    vocab = world.vocabulary()
    assert list(vocab) == ["colour", "shape", "size", "position", "background"]
    scenes = world.indices_to_scenes(world.sample_indices(200, seed=0))
    assert np.array_equal(world.scenes_to_indices(scenes), world.sample_indices(200, seed=0))
    for c, tags in vocab.items():
        assert {s[c] for s in scenes} == set(tags)
    assert world.caption(scenes[0]) == ", ".join(scenes[0][c] for c in vocab)


def test_unknown_tag_is_a_clear_error():
    with pytest.raises(ValueError, match="colour"):
        world.scenes_to_indices([{"colour": "purple", "shape": "square", "size": "small",
                                  "position": "top left", "background": "white background"}])
