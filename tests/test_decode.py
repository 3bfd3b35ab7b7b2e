"""Generation against slow, obviously-right references: full forward passes, brute force, Python."""

import itertools
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_jax as tj
from transformer_jax import decode
from transformer_jax.decode import GenerationConfig

VOCAB = 64
P, N = 5, 6  # prompt width, new tokens


def tokens(key, shape, low=3):
    return jax.random.randint(jax.random.key(key), shape, low, VOCAB).astype(jnp.int32)


def make_lm(seed=0, **overrides):
    cfg = tj.tiny(**{"num_encoder_layers": 0, "num_decoder_layers": 1, "max_len": 16, **overrides})
    model = tj.DecoderLM(cfg)
    return model, model.init(jax.random.key(seed), tokens(seed, (1, 4)))


def make_encdec(seed=0):
    cfg = tj.tiny(num_encoder_layers=1, num_decoder_layers=1, max_len=16)
    model = tj.Transformer(cfg)
    src = tokens(seed + 1, (3, 7)).at[1, 4:].set(0)
    return model, model.init(jax.random.key(seed), src, src[:, :3]), src


@pytest.fixture(scope="module")
def lm():
    return make_lm()


@pytest.fixture(scope="module")
def encdec():
    return make_encdec()


@jax.jit(static_argnames="model")
def _full_logits(model, variables, seq):
    return model.apply(variables, seq, segment_ids=jnp.ones_like(seq))


def full_logits(model, variables, seq):
    """A full forward pass (no cache) on [B, T]; every token is real (no padding mask)."""
    return _full_logits(model, variables, jnp.asarray(seq, jnp.int32))


def reference_greedy(model, variables, prompt, lengths, n, eos_ids=(tj.config.EOS_ID,), pad=0):
    """Greedy continuation, one full forward pass per token on the growing sequence of each row."""
    rows = []
    for row, length in zip(np.asarray(prompt), lengths):
        seq = row[:length].tolist()
        for _ in range(n):
            seq.append(int(jnp.argmax(full_logits(model, variables, [seq])[0, -1])))
            if seq[-1] in eos_ids:
                break
        rows.append(seq + [pad] * (prompt.shape[1] + n - len(seq)))
    return np.array(rows)


def continuation_logprob(model, variables, out, p, eos_ids=(tj.config.EOS_ID,)):
    """Log-probability of out[:, p:] given out[:, :p], up to and including the first EOS; [B]."""
    logp = jax.nn.log_softmax(full_logits(model, variables, out[:, :-1]))
    tok = np.take_along_axis(np.asarray(logp), np.asarray(out)[:, 1:, None], axis=-1)[..., 0]
    total = []
    for r in range(out.shape[0]):
        s = 0.0
        for t in range(p, out.shape[1]):
            s += tok[r, t - 1]
            if int(out[r, t]) in eos_ids:
                break
        total.append(s)
    return np.array(total)


# ---- caches ------------------------------------------------------------------------------------

CACHE_VARIANTS = {
    "paper": {},
    "pre_rms_rotary": dict(norm="rmsnorm", norm_position="pre", position="rotary", num_decoder_layers=2),
    "learned_untied": dict(position="learned", tie_output=False),
    "windowed": dict(decoder_attention=tj.attention.Windowed(2), position="rotary"),
    "gqa_relative": dict(num_kv_heads=2, position="relative", num_decoder_layers=2),
}


@pytest.mark.parametrize("variant", list(CACHE_VARIANTS))
def test_init_cache_is_fresh_and_stepping_it_reproduces_the_full_pass(variant):
    model, variables = make_lm(**CACHE_VARIANTS[variant])
    seq = tokens(3, (2, 9))
    cache = tj.decode.init_cache(model, 2)
    np.testing.assert_array_equal(cache["decoder"]["decode_index"], [0, 0])  # one position per row
    assert all(not np.any(c) for c in jax.tree.leaves(
        {k: v["self_attention"]["cache_index"] for k, v in cache["decoder"].items() if k.startswith("layer_")}))
    # the trap init_cache avoids: init has already run one step
    np.testing.assert_array_equal(
        model.init(jax.random.key(0), seq[:, :1], decode=True)["cache"]["decoder"]["decode_index"], [1, 1])
    outs = []
    for t in range(seq.shape[1]):
        logits, state = model.apply({**variables, "cache": cache}, seq[:, t:t + 1], decode=True, mutable=["cache"])
        cache = state["cache"]
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full_logits(model, variables, seq), atol=1e-5, rtol=0)


def test_init_cache_of_the_encoder_decoder_takes_the_encoder_output_on_the_first_step(encdec):
    model, variables, src = encdec
    tgt_in = tokens(4, (3, 6)).at[:, 0].set(tj.config.BOS_ID)
    cache = tj.decode.init_cache(model, 3)
    assert "cross_key" not in str(jax.tree_util.tree_structure(cache))
    encoded = model.apply(variables, src, method=tj.Transformer.encode)
    outs = []
    for t in range(tgt_in.shape[1]):
        logits, state = model.apply({**variables, "cache": cache}, encoded if t == 0 else None, src,
                                    tgt_in[:, t:t + 1], decode=True, mutable=["cache"], method=tj.Transformer.decode)
        cache = state["cache"]
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), model.apply(variables, src, tgt_in), atol=1e-5, rtol=0)


# ---- DecoderLM continuation --------------------------------------------------------------------

@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
def test_greedy_continuation_equals_full_pass_argmax(lm, lengths):
    model, variables = lm
    prompt = tokens(5, (3, P))
    out = tj.generate(model, variables, prompt, max_new_tokens=N, prompt_lengths=lengths)
    assert out.dtype == jnp.int32 and out.shape == (3, P + N)
    ref = reference_greedy(model, variables, prompt, lengths or [P] * 3, N)
    np.testing.assert_array_equal(out, ref)
    # max_len is the output width
    np.testing.assert_array_equal(tj.generate(model, variables, prompt, max_len=P + N, prompt_lengths=lengths), out)


def test_decoder_lm_beam_of_one_is_greedy_and_beams_score_at_least_greedy(lm):
    model, variables = lm
    prompt = tokens(6, (3, P))
    greedy = tj.generate(model, variables, prompt, max_new_tokens=N)
    beam1 = tj.generate(model, variables, prompt, max_new_tokens=N, beam_size=1, length_penalty=0.0)
    np.testing.assert_array_equal(beam1, greedy)
    greedy_lp = continuation_logprob(model, variables, greedy, P)
    for k in (2, 4):
        beam = tj.generate(model, variables, prompt, max_new_tokens=N, beam_size=k, length_penalty=0.0)
        assert beam.shape == (3, P + N)
        np.testing.assert_array_equal(beam[:, :P], prompt)
        assert np.all(continuation_logprob(model, variables, beam, P) >= greedy_lp - 1e-4), k


def test_sampling_at_tiny_temperature_is_greedy(lm, encdec):
    model, variables = lm
    prompt = tokens(7, (3, P))
    kw = dict(max_new_tokens=N, prompt_lengths=[5, 3, 1])
    cold = tj.generate(model, variables, prompt, temperature=1e-6, rng=jax.random.key(3), **kw)
    np.testing.assert_array_equal(cold, tj.generate(model, variables, prompt, **kw))
    hot = [tj.generate(model, variables, prompt, temperature=2.0, top_p=0.9, rng=jax.random.key(s), **kw)
           for s in (1, 1, 2)]
    np.testing.assert_array_equal(hot[0], hot[1])
    assert not np.array_equal(hot[0], hot[2])
    model, variables, src = encdec
    cold = tj.generate(model, variables, src, max_len=N, temperature=1e-6, top_k=5, rng=jax.random.key(4))
    np.testing.assert_array_equal(cold, tj.generate(model, variables, src, max_len=N))


def test_forced_bos_and_eos(lm, encdec):
    model, variables = lm
    prompt, lengths = tokens(8, (3, P)), [5, 2, 4]
    config = GenerationConfig(forced_bos_id=7, forced_eos_id=9, eos_ids=())
    out = np.asarray(tj.generate(model, variables, prompt, max_new_tokens=N, prompt_lengths=lengths,
                                 generation_config=config))
    for r, length in enumerate(lengths):
        assert out[r, length] == 7 and out[r, length + N - 1] == 9
    beam = np.asarray(tj.generate(model, variables, prompt, max_new_tokens=N, beam_size=3, generation_config=config))
    assert (beam[:, P] == 7).all() and (beam[:, -1] == 9).all()
    # forced EOS ends every row: nothing but padding after it
    config = GenerationConfig(forced_bos_id=7, forced_eos_id=9, eos_ids=(9,), pad_id=11)
    model, variables, src = encdec
    out = np.asarray(tj.generate(model, variables, src, max_len=N, generation_config=config))
    assert (out[:, 0] == 7).all()
    for row in out:
        end = row.tolist().index(9)
        assert (row[end + 1:] == 11).all()


def test_eos_stops_a_row_and_pads_it_with_pad_id(lm, encdec):
    model, variables = lm
    prompt = tokens(9, (3, P))
    free = np.asarray(tj.generate(model, variables, prompt, max_new_tokens=N,
                                  generation_config=GenerationConfig(eos_ids=())))
    eos = int(free[0, P + 2])  # a token greedy emits: make it EOS
    config = GenerationConfig(eos_ids=(eos, 60), pad_id=63)
    out = np.asarray(tj.generate(model, variables, prompt, max_new_tokens=N, generation_config=config))
    for r in range(3):
        new = free[r, P:].tolist()
        stop = min([new.index(e) for e in (eos, 60) if e in new], default=N - 1)
        expected = new[:stop + 1] + [63] * (N - stop - 1)
        assert out[r, P:].tolist() == expected
    beam = np.asarray(tj.generate(model, variables, prompt, max_new_tokens=N, beam_size=2, generation_config=config))
    for row in beam[:, P:].tolist():
        if eos in row:
            assert set(row[row.index(eos) + 1:]) <= {63}
    model, variables, src = encdec
    out = np.asarray(tj.generate(model, variables, src, max_len=N, generation_config=GenerationConfig(pad_id=63)))
    for row in out.tolist():
        if tj.config.EOS_ID in row:
            assert set(row[row.index(tj.config.EOS_ID) + 1:]) <= {63}


def test_generate_traces_inside_an_outer_jit(lm, encdec):
    """The training loop jits `generate` itself (inputs are tracers there)."""
    model, variables, src = encdec
    gen = jax.jit(lambda p, s: tj.generate(model, {"params": p}, s, max_len=N, beam_size=2, length_penalty=0.6))
    np.testing.assert_array_equal(gen(variables["params"], src),
                                  tj.generate(model, variables, src, max_len=N, beam_size=2))
    model, variables = lm
    prompt = tokens(12, (3, P))
    gen = jax.jit(lambda p, x, n: tj.generate(model, {"params": p}, x, max_new_tokens=N, prompt_lengths=n))
    np.testing.assert_array_equal(gen(variables["params"], prompt, jnp.array([5, 2, 4])),
                                  tj.generate(model, variables, prompt, max_new_tokens=N, prompt_lengths=[5, 2, 4]))


# ---- the core with a model of our own ---------------------------------------------------------

def bigram_pair_step(a, b):
    """A toy model: logits = a[previous token] + b[token]; the previous token rides in the cache
    (batched, so beams must reorder it), next to a shared step counter."""
    def step(cache, tok):
        logits = a[cache["prev"]] + b[tok]
        return logits, {"prev": tok, "t": cache["t"] + 1}
    return step


def test_core_beam_search_with_a_custom_step_is_exact_when_beams_hold_every_prefix():
    v, n = 4, 3
    a, b = jax.random.normal(jax.random.key(1), (2, v, v))
    prompt = jnp.array([[1, 2], [3, 0]], jnp.int32)
    cache = {"prev": jnp.zeros((2,), jnp.int32), "t": jnp.array(0)}
    step = bigram_pair_step(a, b)
    search = jax.jit(lambda c, p: decode.beam_search(
        step, c, p, max_new_tokens=n, beam_size=v ** (n - 1), length_penalty=0.0,
        config=GenerationConfig(eos_ids=()), batched=decode.batched_by_name(("prev",))))
    out = np.asarray(search(cache, prompt))
    la, lb = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def score(seq):  # log-probability of seq[2:] given seq[:2]
        z = la[seq[:-1][:-1]] + lb[seq[:-1][1:]]  # logits predicting seq[2:]
        z = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return sum(z[t, seq[t + 2]] for t in range(len(seq) - 2))

    for r in range(2):
        best = max(itertools.product(range(v), repeat=n), key=lambda y: score(list(prompt[r]) + list(y)))
        assert out[r].tolist() == list(prompt[r]) + list(best)
    # a leaf marked batched without a batch axis is named
    with pytest.raises(ValueError, match=r"\['t'\].*has no batch axis"):
        decode.beam_search(step, cache, prompt, max_new_tokens=n, beam_size=2,
                           batched=decode.batched_by_name(("prev", "t")))


def test_core_sample_with_a_custom_step_forces_each_prompt_then_argmaxes():
    v = 8
    a, b = jax.random.normal(jax.random.key(2), (2, v, v))
    prompt = jnp.array([[5, 6, 7], [4, 0, 0]], jnp.int32)
    cache = {"prev": jnp.zeros((2,), jnp.int32), "t": jnp.array(0)}
    out = jax.jit(lambda c: decode.sample(bigram_pair_step(a, b), c, prompt, max_new_tokens=3,
                                          prompt_lengths=jnp.array([3, 1]),
                                          config=GenerationConfig(eos_ids=(), pad_id=-1)))(cache)
    for r, length in enumerate((3, 1)):
        seq, prev = prompt[r, :length].tolist(), 0
        for t in range(length + 2):
            logits = a[prev] + b[seq[t]]
            prev = seq[t]
            if t + 1 >= length:
                seq.append(int(jnp.argmax(logits)))
        assert out[r].tolist() == seq + [-1] * (6 - len(seq))


# ---- GenerationConfig ------------------------------------------------------------------------

def test_generation_config_reads_hugging_face_json(tmp_path):
    bart_like = {"_from_model_config": True, "bos_token_id": 0, "decoder_start_token_id": 2,
                 "eos_token_id": [2, 5], "forced_bos_token_id": 0, "forced_eos_token_id": 2,
                 "pad_token_id": 1, "max_length": 20, "num_beams": 4, "no_repeat_ngram_size": 3,
                 "top_k": 50, "output_scores": False, "transformers_version": "4.41.0"}
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps(bart_like))
    with pytest.warns(UserWarning) as record:
        config = GenerationConfig.from_json(path)
    message = str(record[0].message)
    assert "num_beams=4" in message and "no_repeat_ngram_size=3" in message
    assert "top_k" not in message and "transformers_version" not in message and "output_scores" not in message
    assert config == GenerationConfig(decoder_start_id=2, eos_ids=(2, 5), pad_id=1, forced_bos_id=0,
                                      forced_eos_id=2, max_length=20)
    gpt2_like = {"bos_token_id": 50256, "eos_token_id": 50256, "transformers_version": "4.26.0.dev0",
                 "_from_model_config": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = GenerationConfig.from_dict(gpt2_like)
        assert GenerationConfig.from_dict({}) == GenerationConfig()
    assert config == GenerationConfig(decoder_start_id=50256, eos_ids=(50256,), pad_id=50256)  # HF: pad = EOS
    assert GenerationConfig() == GenerationConfig(decoder_start_id=2, eos_ids=(1,), pad_id=0)
    assert GenerationConfig(eos_ids=7).eos_ids == (7,)
    # without a generation config, rows pad with the model's own padding token
    assert decode.adapters._default_config(tj.DecoderLM(tj.tiny(pad_id=5))) == GenerationConfig(pad_id=5)
    assert decode.adapters._default_config(tj.DecoderLM(tj.tiny(pad_id=None))) == GenerationConfig()


def test_lengths_from_generation_config_follow_hugging_face(lm, encdec):
    model, variables, src = encdec
    out = tj.generate(model, variables, src, generation_config=GenerationConfig(max_length=N + 1))
    assert out.shape == (3, N)  # HF's max_length counts the start token
    np.testing.assert_array_equal(out, tj.generate(model, variables, src, max_len=N))
    model, variables = lm
    prompt = tokens(10, (3, P))
    config = GenerationConfig(max_length=P + 3, max_new_tokens=N)  # max_new_tokens wins, as in HF
    assert tj.generate(model, variables, prompt, generation_config=config).shape == (3, P + N)
    config = GenerationConfig(max_length=P + 3)
    assert tj.generate(model, variables, prompt, generation_config=config).shape == (3, P + 3)
    assert tj.generate(model, variables, prompt, max_new_tokens=2, generation_config=config).shape == (3, P + 2)


# ---- errors before compile -------------------------------------------------------------------

ERRORS = {
    "lm_past_cache": (dict(max_new_tokens=13), ValueError, r"prompt of 5 plus 13 new tokens.*cfg.max_len is 16"),
    "encdec_past_cache": (dict(max_len=17), ValueError, r"prompt of 1 plus 17 new tokens.*cfg.max_len is 16"),
    "beam_size": (dict(max_new_tokens=2, beam_size=0), ValueError, "beam_size must be an int >= 1; got 0"),
    "temperature": (dict(max_new_tokens=2, temperature=-1.0), ValueError, "temperature must be a finite number >= 0.0; got -1.0"),
    "temperature_nan": (dict(max_new_tokens=2, temperature=float("nan")), ValueError, "temperature must be a finite number"),
    "length_penalty_nan": (dict(max_new_tokens=2, beam_size=2, length_penalty=float("nan")), ValueError,
                           "length_penalty must be a finite number; got nan"),
    "max_new_tokens_bool": (dict(max_new_tokens=True), ValueError, "max_new_tokens must be an int >= 1 or None; got True"),
    "max_len_float": (dict(max_len=8.0), ValueError, "max_len must be an int >= 1 or None; got 8.0"),
    "float_tokens": (dict(max_new_tokens=2, inputs=np.ones((3, P), np.float32)), ValueError, "int token ids; got dtype float32"),
    "bool_tokens": (dict(max_new_tokens=2, inputs=np.ones((3, P), bool)), ValueError, "int token ids; got dtype bool"),
    "negative_tokens": (dict(max_new_tokens=2, inputs=-np.ones((3, P), np.int32)), ValueError, r"in \[0, 64\).*got -1..-1"),
    "tokens_past_vocab": (dict(max_new_tokens=2, inputs=np.full((3, P), 64)), ValueError, r"in \[0, 64\).*got 64..64"),
    "greedy_many_sequences": (dict(max_new_tokens=2, num_return_sequences=2), ValueError, "needs sampling"),
    "more_sequences_than_beams": (dict(max_new_tokens=2, beam_size=2, num_return_sequences=3), ValueError,
                                  "must be <= beam_size=2"),
    "repetition_penalty": (dict(max_new_tokens=2, repetition_penalty=0.0), ValueError, "repetition_penalty must be"),
    "ngram_negative": (dict(max_new_tokens=2, no_repeat_ngram_size=-1), ValueError, "no_repeat_ngram_size must be"),
    "beam_scoring": (dict(max_new_tokens=2, beam_size=2, beam_scoring="x"), ValueError, "beam_scoring must be one of gnmt, hf"),
    "stream_beams": (dict(max_new_tokens=2, beam_size=2, on_token=print), ValueError, "beam search settles"),
    "top_k": (dict(max_new_tokens=2, top_k=-1), ValueError, "top_k=-1"),
    "top_k_past_vocab": (dict(max_new_tokens=2, top_k=65), ValueError, r"top_k an int in \[0, 64\]"),
    "top_p": (dict(max_new_tokens=2, top_p=0.0), ValueError, "top_p=0.0"),
    "sampling_without_rng": (dict(max_new_tokens=2, temperature=1.0), ValueError, "needs rng"),
    "beam_and_temperature": (dict(max_new_tokens=2, beam_size=2, temperature=1.0, rng=jax.random.key(0)),
                             ValueError, "deterministic"),
    "both_lengths": (dict(max_len=8, max_new_tokens=2), ValueError, "not both"),
    "no_length": (dict(), ValueError, "give max_len or max_new_tokens"),
    "max_len_within_prompt": (dict(max_len=5), ValueError, "max_len=5 leaves 0 tokens"),
    "prompt_length_zero": (dict(max_new_tokens=2, prompt_lengths=[0, 5, 5]), ValueError,
                           r"in \[1, 5\] \(the prompt width\); got 0..5"),
    "prompt_length_past_width": (dict(max_new_tokens=2, prompt_lengths=[6, 5, 5]), ValueError, r"got 5..6"),
    "prompt_lengths_shape": (dict(max_new_tokens=2, prompt_lengths=[5, 5]), ValueError, r"shape \(3,\)"),
    "encdec_prompt_lengths": (dict(max_len=2, prompt_lengths=[1, 1, 1]), ValueError, "decoder-only"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_arguments_fail_before_compiling(lm, encdec, case, monkeypatch):
    monkeypatch.setattr(decode.adapters, "_generate", lambda *a, **k: pytest.fail("reached compilation"))
    kwargs, error, needle = ERRORS[case]
    if case.startswith("encdec"):
        model, variables, inputs = encdec
    else:
        (model, variables), inputs = lm, tokens(11, (3, P))
    kwargs = dict(kwargs)
    inputs = kwargs.pop("inputs", inputs)
    with pytest.raises(error, match=needle):
        tj.generate(model, variables, inputs, **kwargs)


def test_models_without_an_adapter_are_named():
    cfg = tj.tiny(num_decoder_layers=0, num_encoder_layers=1)
    model = tj.MaskedLM(cfg)
    with pytest.raises(TypeError, match="no adapter for MaskedLM; supported: Transformer, DecoderLM"):
        tj.generate(model, {}, tokens(0, (1, 3)), max_new_tokens=2)
    with pytest.raises(TypeError, match="MaskedLM"):
        decode.init_cache(model, 1)


def test_a_source_past_learned_positions_is_named_before_compiling(monkeypatch):
    cfg = tj.tiny(position="learned", max_len=8)
    model = tj.Transformer(cfg)
    variables = model.init(jax.random.key(0), tokens(1, (1, 4)), tokens(2, (1, 4)))
    monkeypatch.setattr(decode.adapters, "_generate", lambda *a, **k: pytest.fail("reached compilation"))
    with pytest.raises(ValueError, match=r"a source of 12 tokens, but the model's learned positions end at "
                                         r"cfg.max_len = 8"):
        tj.generate(model, variables, tokens(3, (1, 12)), max_new_tokens=2)
