"""data/framed.py: a built-in tokenizer called like a checkpoint's fast tokenizer. The reference is the
BERT fixture tokenizer (the reference library's layout, `tj.load_tokenizer`) on words that are one
BERT token each, so both tokenize alike and every window, type, word id and offset must agree."""

import os
import random

import pytest

from transformer_jax.config import BOS_ID, EOS_ID
from transformer_jax.data.framed import Framed
from transformer_jax.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, WordTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the dog river book model student town music fox text corpus who wrote written by".split()


@pytest.fixture(scope="module")
def pair():
    from transformer_jax.pretrained import load_tokenizer

    bert = load_tokenizer(os.path.join(ROOT, "tests", "fixtures", "tokenizers", "bert"))
    return bert, Framed(WordTokenizer(WORDS), "encoder")


def _as_ours(bert, ids):
    """BERT's ids in our numbering: [CLS] -> BOS, [SEP] -> EOS, a word -> its WordTokenizer id."""
    words = {bert.cls_token_id: BOS_ID, bert.sep_token_id: EOS_ID}
    return [words[i] if i in words else WORDS.index(bert.convert_ids_to_tokens([i])[0]) + 4 for i in ids]


def _rows(x):
    """Arrays, lists and tuples as nested lists."""
    x = x.tolist() if hasattr(x, "tolist") else x
    return [_rows(r) for r in x] if isinstance(x, (list, tuple)) else x


@pytest.mark.parametrize("max_length,stride", [(12, 3), (9, 1), (40, 0)])
def test_question_answering_windows_match_the_reference_tokenizer(pair, max_length, stride):
    bert, ours = pair
    rng = random.Random(max_length)
    questions = [" ".join(rng.choices(WORDS, k=rng.randint(2, 4))) for _ in range(3)]
    contexts = ["  ".join(rng.choices(WORDS, k=rng.randint(5, 25))) for _ in range(3)]
    kw = dict(truncation="only_second", max_length=max_length, stride=stride, return_overflowing_tokens=True,
              return_offsets_mapping=True)
    want, got = bert(questions, contexts, **kw), ours(questions, contexts, **kw)
    assert [_as_ours(bert, r) for r in _rows(want["input_ids"])] == got["input_ids"]
    for key in ("token_type_ids", "sequence_ids", "overflow_to_sample_mapping", "offset_mapping"):
        assert _rows(want[key]) == _rows(got[key]), key
    assert max(map(len, got["input_ids"])) <= max_length


def test_pairs_truncate_longest_first_as_the_reference(pair):
    bert, ours = pair
    a, b = "the dog river book model student town", "who wrote"
    for a, b, max_length in [(a, b, 6), (a, b, 8), (a, b, 11), (a, b, 30), (b, "fox text", 6), (b, "fox text", 7)]:
        want, got = bert([a, b], [b, a], truncation=True, max_length=max_length), \
            ours([a, b], [b, a], truncation=True, max_length=max_length)
        assert [_as_ours(bert, r) for r in _rows(want["input_ids"])] == got["input_ids"]
        assert _rows(want["token_type_ids"]) == got["token_type_ids"]


def test_words_carry_their_index_as_the_reference(pair):
    bert, ours = pair
    words = [["the", "dog", "wrote"], ["fox", "by", "river", "town", "music"]]
    want = bert(words, is_split_into_words=True, truncation=True, max_length=5)
    got = ours(words, is_split_into_words=True, truncation=True, max_length=5)
    assert want["word_ids"] == got["word_ids"]


def test_framings_put_the_reserved_ids_where_a_checkpoint_puts_its_special_tokens():
    tok = ByteTokenizer()
    ids = tok.encode("ab")
    assert Framed(tok, "encoder").encode("ab") == [BOS_ID, *ids, EOS_ID]
    assert Framed(tok, "seq2seq").encode("ab") == [*ids, EOS_ID]
    assert Framed(tok, "decoder").encode("ab") == [BOS_ID, *ids]
    assert Framed(tok, "decoder")("ab", add_special_tokens=False)["input_ids"] == [ids]
    assert Framed(tok, "seq2seq")("abcdef", truncation=True, max_length=4)["input_ids"] == [[*ids, ids[1] + 1, EOS_ID]]
    with pytest.raises(ValueError, match="framing='bert'"):
        Framed(tok, "bert")


def test_a_window_narrower_than_the_stride_is_a_named_error(pair):
    _, ours = pair
    with pytest.raises(ValueError, match=r"max_length=8 with stride=3: 4 tokens of the first text .* windows of 1"):
        ours("the dog river book", "fox " * 10, truncation="only_second", max_length=8, stride=3,
             return_overflowing_tokens=True)


def test_offsets_of_sentencepiece_and_byte_pieces_point_at_their_text(tmp_path):
    text = "  Zürich  is where the   river meets   the town."
    sp = SentencePieceTokenizer(tmp_path / "m.model", vocab_size=60, texts=[text, "the dog by the river"] * 20)
    ids, offsets = sp.encode_with_offsets(text)
    assert ids == sp.encode(text)
    assert [text[s:e] for s, e in offsets] == [sp._sp.id_to_piece(i).replace("\u2581", "") for i in ids]
    ids, offsets = ByteTokenizer().encode_with_offsets(text)
    assert ids == ByteTokenizer().encode(text)
    for i, (s, e) in zip(ids, offsets):  # each byte in its character; whitespace an empty span
        assert bytes([i - 4]) in text[s:e].encode() if s < e else chr(i - 4).isspace()
