"""`generate`'s options against the reference library's `generate` on the tiny fixtures.

References: tests/fixtures/pretrained/generation.{npz,json}, written by
make_generation_fixtures.py in the reference venv (transformers 5): repetition penalty, n-gram
bans, a minimum of new tokens, beam search with the reference's length normalisation and several
returned beams (with their scores), and prompts of different lengths (left-padded there,
right-padded here), for GPT-2 (decoder-only) and BART (encoder-decoder).
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax.decode import GenerationConfig

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
REF = dict(np.load(FIXTURES / "generation.npz"))
CASES = json.loads((FIXTURES / "generation.json").read_text())["cases"]
OPTIONS = ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "num_return_sequences", "length_penalty")


@pytest.fixture(scope="module")
def gpt2():
    return tj.from_pretrained(FIXTURES / "gpt2")


@pytest.fixture(scope="module")
def bart():
    return tj.from_pretrained(FIXTURES / "bart")


def our_options(settings: dict) -> dict:
    kw = {k: settings[k] for k in OPTIONS if k in settings}
    if settings.get("num_beams", 1) > 1:
        kw.update(beam_size=settings["num_beams"], beam_scoring="hf")
    return kw


def decoder_only(gpt2, name, lengths=None):
    model, variables = gpt2
    settings = CASES[name]
    config = GenerationConfig(eos_ids=(settings["eos_token_id"],), pad_id=settings["pad_token_id"])
    prompt = REF["gpt2_prompt"]
    out = tj.generate(model, variables, prompt, max_new_tokens=settings["max_new_tokens"], generation_config=config,
                      prompt_lengths=lengths, return_dict=True, **our_options(settings))
    return out, np.asarray(out.sequences)


@pytest.mark.parametrize("name", ["gpt2_repetition_penalty", "gpt2_no_repeat_ngram", "gpt2_min_new_tokens",
                                  "gpt2_min_new_tokens_off", "gpt2_beam_hf", "gpt2_beam_hf_penalty"])
def test_decoder_only_options_match_the_reference(gpt2, name):
    out, tokens = decoder_only(gpt2, name)
    expected = REF[name]
    np.testing.assert_array_equal(tokens[:, :expected.shape[1]], expected)
    if name + "_scores" in REF:
        np.testing.assert_allclose(out.scores, REF[name + "_scores"], rtol=1e-4, atol=1e-5)


def test_min_new_tokens_changes_the_output(gpt2):
    """The case is built so that EOS comes early without the option (else the test could not fail)."""
    off, on = REF["gpt2_min_new_tokens_off"], REF["gpt2_min_new_tokens"]
    assert off[0, 13] == CASES["gpt2_min_new_tokens"]["eos_token_id"] and not np.array_equal(off, on)


@pytest.mark.parametrize("name", ["gpt2_ragged_greedy", "gpt2_ragged_beam_hf"])
def test_prompts_of_different_lengths_match_the_left_padded_reference(gpt2, name):
    lengths = REF["gpt2_ragged_lengths"]
    out, tokens = decoder_only(gpt2, name, lengths)
    expected = REF[name][:, lengths.max():]  # the reference pads on the left: new tokens after column P
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(tokens[b, n:n + expected.shape[1]], expected[b])
    if name + "_scores" in REF:
        np.testing.assert_allclose(out.scores, REF[name + "_scores"], rtol=1e-4, atol=1e-5)
    assert list(np.asarray(out.lengths)) == [n + CASES[name]["max_new_tokens"] for n in lengths] or \
        np.any(tokens == CASES[name]["eos_token_id"])


@pytest.mark.parametrize("name", ["bart_beam_hf", "bart_repetition_ngram"])
def test_encoder_decoder_options_match_the_reference(bart, name):
    model, variables = bart
    settings = CASES[name]
    config = tj.load_generation_config(FIXTURES / "bart")
    out = tj.generate(model, variables, REF["bart_source"], max_new_tokens=settings["max_new_tokens"],
                      generation_config=config, return_dict=True, **our_options(settings))
    expected = REF[name][:, 1:]  # the reference returns the start token first
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :expected.shape[1]], expected)
    if name + "_scores" in REF:
        np.testing.assert_allclose(out.scores, REF[name + "_scores"], rtol=1e-4, atol=1e-5)


def test_return_dict_lengths_tell_eos_from_padding(gpt2):
    model, variables = gpt2
    eos = int(REF["gpt2_min_new_tokens_off"][0, 13])
    config = GenerationConfig(eos_ids=(eos,), pad_id=eos)  # padding IS the EOS id: only lengths tell
    out = tj.generate(model, variables, REF["gpt2_prompt"], max_new_tokens=6, generation_config=config,
                      return_dict=True)
    seq = np.asarray(out.sequences)
    for row, n in zip(seq, np.asarray(out.lengths)):
        assert n <= 12 + 6 and (n == 12 + 6 or row[n - 1] == eos)
    plain = tj.generate(model, variables, REF["gpt2_prompt"], max_new_tokens=6, generation_config=config)
    np.testing.assert_array_equal(plain, seq)  # the default return value is still the array


def test_sampled_sequences_and_streaming(gpt2):
    model, variables = gpt2
    seen = []
    config = GenerationConfig(eos_ids=(), pad_id=1)
    out = tj.generate(model, variables, REF["gpt2_prompt"], max_new_tokens=4, temperature=1.0, top_k=20,
                      rng=jax.random.key(3), num_return_sequences=3, generation_config=config,
                      on_token=lambda i, tok, done: seen.append((i, tok.tolist())))
    assert out.shape == (6, 16)
    np.testing.assert_array_equal(np.asarray(out)[:, :12], np.repeat(REF["gpt2_prompt"], 3, axis=0))
    jax.effects_barrier()
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.array([t for _, t in seen]).T, np.asarray(out)[:, 12:])


def test_jitted_beam_search_with_traced_prompt_lengths(gpt2):
    """Issue 24.5: a causal-LM workdir's decode jits generate with traced prompt lengths."""
    model, variables = gpt2
    config = GenerationConfig(eos_ids=(0,), pad_id=1)
    lengths = REF["gpt2_ragged_lengths"]
    gen = jax.jit(lambda x, n: tj.generate(model, variables, x, max_new_tokens=5, beam_size=3, prompt_lengths=n,
                                           generation_config=config))
    np.testing.assert_array_equal(gen(REF["gpt2_prompt"], lengths),
                                  tj.generate(model, variables, REF["gpt2_prompt"], max_new_tokens=5, beam_size=3,
                                              prompt_lengths=lengths, generation_config=config))
