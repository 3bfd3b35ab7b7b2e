"""The parallel prefill and per-row caches against full forward passes and the token-by-token path.

A prompt of right-padded rows (lengths 6, 2, 4) goes through the cache in one call, then a few
single steps continue each row from its own end; every logit at a real position must equal the
full (uncached) pass over that row's sequence, for every attention spec, rotary / learned /
relative positions, grouped-query heads and scanned layers. Tokens from `generate` (prefill) must
equal the token-by-token path (`decode.sample` with no prefill, a cfg.max_len cache).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax import decode
from transformer_jax.attention import BlockSparse, Dense, Flash, Performer, Windowed

VOCAB = 64
LENGTHS = np.array([6, 2, 4])
STEPS = 3

SPECS = {
    "dense": {},
    "rotary_rms": dict(norm="rmsnorm", norm_position="pre", position="rotary"),
    "learned_untied": dict(position="learned", tie_output=False),
    "windowed": dict(decoder_attention=Windowed(2), position="rotary"),
    "block_sparse": dict(decoder_attention=BlockSparse(2, 3, 1, 1, seed=3)),
    "flash_per_layer": dict(decoder_attention=(Windowed(1), Flash(block_size=4)), num_decoder_layers=2),
    "performer": dict(decoder_attention=Performer(num_features=16, chunk_size=4)),
    "gqa_relative": dict(num_kv_heads=2, position="relative", relative_buckets=8, relative_max_distance=16),
    "scanned": dict(decoder_attention=(Windowed(2), Dense()) * 2, num_decoder_layers=4, scan_layers=True,
                    position="rotary"),
}


def tokens(key, shape):
    return jax.random.randint(jax.random.key(key), shape, 3, VOCAB).astype(jnp.int32)


def make_lm(**overrides):
    cfg = tj.tiny(**{"num_encoder_layers": 0, "num_decoder_layers": 1, "max_len": 16, **overrides})
    model = tj.DecoderLM(cfg)
    return model, model.init(jax.random.key(0), tokens(0, (1, 4)))


@jax.jit(static_argnames="model")
def _cached_logits(model, variables, prompt, segment_ids, cont):
    """Prefill prompt [B, P] (right padding marked by segment_ids) into a 12-slot cache, then STEPS
    single steps of cont [B, STEPS]: logits [B, P, V] and [B, STEPS, V]."""
    cache = decode.init_cache(model, prompt.shape[0], 12)
    first, state = model.apply({**variables, "cache": cache}, prompt, segment_ids=segment_ids, decode=True,
                               mutable=["cache"])
    cache, later = state["cache"], []
    for t in range(cont.shape[1]):
        logits, state = model.apply({**variables, "cache": cache}, cont[:, t:t + 1], decode=True, mutable=["cache"])
        cache = state["cache"]
        later.append(logits)
    return first, jnp.concatenate(later, axis=1)


def check_against_full_pass(model, variables, prompt, lengths, cont, atol=1e-5):
    segment_ids = (np.arange(prompt.shape[1])[None] < lengths[:, None]).astype(np.int32)
    first, later = _cached_logits(model, variables, prompt, jnp.asarray(segment_ids), cont)
    # each row's own sequence, right-padded (causal: the padding changes nothing before it)
    seqs = np.zeros((len(lengths), prompt.shape[1] + cont.shape[1]), np.int32)
    for b, n in enumerate(lengths):
        seqs[b, :n + cont.shape[1]] = np.concatenate([np.asarray(prompt)[b, :n], np.asarray(cont)[b]])
    full = _full_logits(model, variables, jnp.asarray(seqs))
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(first[b, :n], full[b, :n], atol=atol, rtol=0)
        np.testing.assert_allclose(later[b], full[b, n:n + cont.shape[1]], atol=atol, rtol=0)


@jax.jit(static_argnames="model")
def _full_logits(model, variables, seqs):
    return model.apply(variables, seqs, segment_ids=jnp.ones_like(seqs))


@pytest.mark.parametrize("spec", list(SPECS))
def test_prefill_then_steps_equal_the_full_pass(spec):
    model, variables = make_lm(**SPECS[spec])
    check_against_full_pass(model, variables, tokens(1, (3, 6)), LENGTHS, tokens(2, (3, STEPS)))


def stepwise_greedy(model, variables, prompt, lengths, n):
    """The token-by-token path: each prompt token fed as one step into a cfg.max_len cache."""
    prepared = decode.adapters._adapter(model).prepare(model, variables, prompt, None, decode.GenerationConfig(
        pad_id=0))
    return jax.jit(lambda c, p, l: decode.sample(prepared.step, c, p, max_new_tokens=n, prompt_lengths=l,
                                                 config=decode.GenerationConfig(pad_id=0)))(
        decode.init_cache(model, prompt.shape[0]), prompt, lengths)


@pytest.mark.parametrize("spec", ["dense", "windowed", "performer", "scanned"])
def test_generate_tokens_equal_the_token_by_token_path(spec):
    model, variables = make_lm(**SPECS[spec])
    prompt = tokens(3, (3, 6))
    out = tj.generate(model, variables, prompt, max_new_tokens=5, prompt_lengths=LENGTHS,
                      generation_config=decode.GenerationConfig(pad_id=0))
    np.testing.assert_array_equal(out, stepwise_greedy(model, variables, prompt, jnp.asarray(LENGTHS), 5))


def test_encoder_decoder_chunk_equals_teacher_forcing():
    cfg = tj.tiny(num_encoder_layers=1, num_decoder_layers=1, max_len=16, position="rotary", num_kv_heads=2)
    model = tj.Transformer(cfg)
    src, tgt = tokens(4, (2, 7)).at[1, 5:].set(0), tokens(5, (2, 6))
    variables = model.init(jax.random.key(1), src, tgt)
    full = model.apply(variables, src, tgt)
    prepared = decode.adapters._adapter(model).prepare(model, variables, src, None, decode.GenerationConfig(), 8)
    first, cache = prepared.chunk(prepared.cache, tgt[:, :4])  # the first call creates the cross K/V
    second, _ = prepared.chunk(cache, tgt[:, 4:])
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), full, atol=1e-5, rtol=0)


def test_cache_is_sized_to_the_work():
    model, variables = make_lm(max_len=1024)
    assert [decode.cache_bucket(n, 1024) for n in (1, 17, 100, 191, 192, 193, 576, 2000)] == \
        [16, 24, 128, 192, 192, 256, 768, 1024]
    cache = decode.init_cache(model, 2, 40)
    assert cache["decoder"]["layer_0"]["self_attention"]["cached_key"].shape[::2] == (2, 40)  # [B K L H]
    ring = decode.init_cache(make_lm(max_len=1024, decoder_attention=Windowed(3))[0], 2, 40)
    assert ring["decoder"]["layer_0"]["self_attention"]["cached_key"].shape[::2] == (2, 4)  # window + 1


FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"


@pytest.mark.parametrize("case", ["gpt2", "llama", "mistral", "qwen3", "gemma3"])
def test_family_fixtures_prefill_with_ragged_prompts(case):
    model, variables = tj.from_pretrained(FIXTURES / case)
    ref = np.load(FIXTURES / case / "reference.npz")
    prompt = jnp.asarray(ref["input_ids"][:, :8], jnp.int32)
    prompt = jnp.concatenate([prompt, prompt[:1]])  # three rows
    check_against_full_pass(model, variables, prompt, np.array([8, 3, 5]), prompt[:, :STEPS] % 97 + 3, atol=1e-4)
