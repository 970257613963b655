from benchmark.toyworld import tokenizer_build, world
from benchmark.toyworld.family import CONFIG_DIR, build_text_encoder, load_tokenizer


def test_every_tag_word_is_one_token_and_prompts_fit():
    tok = load_tokenizer()
    for tag in world.all_tags():
        ids = tok(tag, add_special_tokens=False).input_ids
        assert len(ids) == len(tag.split()), tag
        assert tok.decode(ids).strip() == tag
    prompt = world.caption(world.indices_to_scenes(world.sample_indices(1, seed=0))[0])
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == tok.model_max_length and ids[0] == tok.bos_token_id
    assert len(tok(prompt).input_ids) < tok.model_max_length


def test_unknown_words_fall_back_to_bytes_and_sizes_agree_with_the_text_encoder():
    tok = load_tokenizer()
    assert len(tok("zebra", add_special_tokens=False).input_ids) > 1
    cfg = build_text_encoder().config
    assert len(tok) == cfg.vocab_size
    assert (tok.bos_token_id, tok.eos_token_id) == (cfg.bos_token_id, cfg.eos_token_id)
    assert tok.model_max_length == cfg.max_position_embeddings


def test_shipped_files_are_what_the_builder_writes():
    for name, text in tokenizer_build.build_files().items():
        assert (CONFIG_DIR / "tokenizer" / name).read_text(encoding="utf-8") == text, name
