"""Speculative greedy decoding gives exactly the target's greedy tokens, whatever the draft."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax.attention import Windowed
from transformer_jax.decode import GenerationConfig
from transformer_jax.decode.speculative import speculative_generate

VOCAB = 64
CONFIG = GenerationConfig(eos_ids=(1,), pad_id=0)


def tokens(key, shape):
    return jax.random.randint(jax.random.key(key), shape, 3, VOCAB).astype(jnp.int32)


def lm(seed, layers=1, **kw):
    model = tj.DecoderLM(tj.tiny(num_encoder_layers=0, num_decoder_layers=layers, max_len=32, **kw))
    return model, model.init(jax.random.key(seed), tokens(0, (1, 4)))


@pytest.mark.parametrize("draft", ["self", "other"])
def test_decoder_only_equals_target_greedy(draft):
    target, tv = lm(0, layers=2, position="rotary")
    d, dv = (target, tv) if draft == "self" else lm(5, position="learned")
    prompt, lengths = tokens(1, (3, 6)), np.array([6, 2, 4])
    want = tj.generate(target, tv, prompt, max_new_tokens=10, prompt_lengths=lengths, generation_config=CONFIG)
    got, stats = speculative_generate(target, tv, d, dv, prompt, max_new_tokens=10, num_draft_tokens=3,
                                      prompt_lengths=lengths, generation_config=CONFIG, return_stats=True)
    np.testing.assert_array_equal(got, want)
    if draft == "self":  # a draft that always agrees: k + 1 tokens per target pass
        assert int(stats.rounds) <= -(-9 // 4) and np.all(np.asarray(stats.accepted) > 0)


def test_encoder_decoder_equals_target_greedy():
    cfg = tj.tiny(num_encoder_layers=1, num_decoder_layers=2, max_len=16)
    target = tj.Transformer(cfg)
    src = tokens(2, (2, 7)).at[1, 5:].set(0)
    tv = target.init(jax.random.key(1), src, src[:, :3])
    draft = tj.Transformer(tj.tiny(num_encoder_layers=1, num_decoder_layers=1, max_len=16))
    dv = draft.init(jax.random.key(2), src, src[:, :3])
    want = tj.generate(target, tv, src, max_new_tokens=8, generation_config=CONFIG)
    np.testing.assert_array_equal(speculative_generate(target, tv, draft, dv, src, max_new_tokens=8,
                                                       generation_config=CONFIG), want)


def test_caches_that_cannot_roll_back_are_named():
    target, tv = lm(0)
    windowed, wv = lm(1, decoder_attention=Windowed(2))
    with pytest.raises(ValueError, match="draft model's decoder attention Windowed.*cannot be rolled back"):
        speculative_generate(target, tv, windowed, wv, tokens(1, (1, 4)), max_new_tokens=2)
