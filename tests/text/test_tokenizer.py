"""The text tokenizer: deterministic training, special ids, truncation and padding, every way of
saving and loading giving the same ids, and transformers' tokenizer agreeing with ``encode``."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from dist_contrast.text import SPECIAL_TOKENS, TextTokenizer

# Accented and Greek letters too: the trainer's ## pieces of every alphabet get fixed ids.
_WORDS = ["read", "csv", "file", "path", "open", "return", "parse", "json", "Straße", "ΟΔΟΣ"]
_ENDINGS = ["", "s", "ing", "ed", "_x", "()"]


def _corpus(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(_WORDS) + rng.choice(_ENDINGS) for _ in range(rng.randint(2, 9)))
        for _ in range(n)
    ]


CORPUS = _corpus()
TEXTS = ["Read a CSV file", "", "def read_csv(path): return open(path).read()", "json " * 40]


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def tokenizer(request: pytest.FixtureRequest) -> TextTokenizer:
    return TextTokenizer.train(CORPUS, kind=request.param, vocab_size=150)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_training_is_deterministic(kind: str) -> None:
    # The tokenizers WordPiece trainer alone gives a different vocabulary each time.
    first, second = (TextTokenizer.train(CORPUS, kind=kind, vocab_size=150) for _ in range(2))
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    assert torch.equal(first.encode(TEXTS, 16), second.encode(TEXTS, 16))


def test_special_tokens_come_first(tokenizer: TextTokenizer) -> None:
    assert [tokenizer.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id) == (0, 2, 3)
    assert len(SPECIAL_TOKENS) < tokenizer.vocab_size <= 150
    assert tokenizer.tokens(["parse"]) == [["parse"]]  # a frequent word is one token


def test_words_split_on_punctuation_and_lowercased(tokenizer: TextTokenizer) -> None:
    tokens = tokenizer.tokens(["Read_CSV(path)"])[0]
    assert tokens[:5] == ["read", "_", "csv", "(", "path"] and tokens[-1] == ")"
    cased = TextTokenizer.train(CORPUS + ["Read CSV"], vocab_size=150, lowercase=False)
    assert cased.tokens(["Read"]) == [["Read"]]


def test_encode_truncates_and_pads(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode(TEXTS, 8)
    assert ids.shape == (4, 8) and ids.dtype == torch.int64
    assert (ids[1] == 0).all()  # the empty text is padding only
    assert (ids[3] != 0).all()  # 40 words cut to 8 tokens
    words = len(tokenizer.tokens(["Read a CSV file"])[0])
    assert (ids[0, :words] != 0).all() and (ids[0, words:] == 0).all()


def test_special_tokens_within_max_length(tokenizer: TextTokenizer) -> None:
    plain = tokenizer.encode(TEXTS, 8)
    framed = tokenizer.encode(TEXTS, 8, special_tokens=True)
    assert framed.shape == (4, 8) and (framed[:, 0] == 2).all()
    assert framed[1].tolist() == [2, 3, 0, 0, 0, 0, 0, 0]
    assert framed[3].tolist() == [2, *plain[3, :6].tolist(), 3]  # cut to fit [CLS] and [SEP]
    with pytest.raises(ValueError, match="max_length must be at least 3"):
        tokenizer.encode(TEXTS, 2, special_tokens=True)


def _same_ids(a: TextTokenizer, b: TextTokenizer) -> None:
    for special in (False, True):
        assert torch.equal(a.encode(TEXTS, 12, special), b.encode(TEXTS, 12, special))
    assert (a.pad_id, a.cls_id, a.sep_id, a.vocab_size) == (b.pad_id, b.cls_id, b.sep_id,
                                                          b.vocab_size)


def test_save_load_json_and_pickle_round_trips(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    assert tokenizer.save(tmp_path / "tok") == tmp_path / "tok"
    _same_ids(tokenizer, TextTokenizer.load(tmp_path / "tok"))
    text = tokenizer.to_json()
    json.loads(text)  # one JSON document, storable as a string param or artifact
    _same_ids(tokenizer, TextTokenizer.from_json(text))
    _same_ids(tokenizer, pickle.loads(pickle.dumps(tokenizer)))
    with pytest.raises(ValueError, match="not a TextTokenizer JSON"):
        TextTokenizer.from_json('{"special": {}}')


def test_hf_tokenizer_gives_the_same_ids(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    hf = tokenizer.as_hf_tokenizer(12)
    batch = hf(TEXTS, truncation=True, padding="max_length", return_tensors="pt")
    assert torch.equal(batch["input_ids"], tokenizer.encode(TEXTS, 12, special_tokens=True))
    assert torch.equal(batch["attention_mask"].bool(), batch["input_ids"] != tokenizer.pad_id)
    # The saved folder is a transformers tokenizer folder too.
    tokenizer.save(tmp_path / "tok")
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert auto(TEXTS, truncation=True, max_length=12, padding="max_length")["input_ids"] == (
        batch["input_ids"].tolist()
    )


def test_from_folder_reads_save_pretrained(tmp_path: Path) -> None:
    # A RoBERTa-like tokenizer: <s> ... </s>, pad at 1. Its ids are read, not assumed.
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "read": 4, "csv": 5, "##s": 6}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", cls_token="<s>", sep_token="</s>",
        unk_token="<unk>",
    )
    hf.save_pretrained(str(tmp_path / "hf"))
    loaded = TextTokenizer.from_folder(tmp_path / "hf")
    assert (loaded.pad_id, loaded.cls_id, loaded.sep_id, loaded.vocab_size) == (1, 0, 2, 7)
    assert loaded.encode(["read csvs x"], 6).tolist() == [[4, 5, 6, 3, 1, 1]]
    assert loaded.encode(["read csvs"], 6, special_tokens=True).tolist() == [[0, 4, 5, 6, 2, 1]]
    assert torch.equal(loaded.encode(TEXTS, 9, True), TextTokenizer.load(
        loaded.save(tmp_path / "again")).encode(TEXTS, 9, True))


def test_from_folder_reads_a_transformers_4_folder_without_post_processor(tmp_path: Path) -> None:
    # transformers 4.x wrote the roles as AddedToken dicts in special_tokens_map.json.
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "read": 4}
    Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    roles = {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {role: {"content": token, "special": True} for role, token in roles.items()}))
    loaded = TextTokenizer.from_folder(tmp_path)
    # No post-processor in tokenizer.json: the cls and sep tokens frame the text as BERT's do.
    assert loaded.encode(["read"], 4, special_tokens=True).tolist() == [[1, 4, 2, 3]]
    assert loaded.encode(["read"], 4).tolist() == [[4, 3, 3, 3]]


def test_from_folder_without_a_tokenizer_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no tokenizer at .*no tokenizer.json") as error:
        TextTokenizer.from_folder(tmp_path)
    assert "\n" not in str(error.value) and "save_pretrained" in str(error.value)
    with pytest.raises(ValueError, match="no folder"):
        TextTokenizer.from_folder(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a tokenizers file"):
        TextTokenizer.from_folder(tmp_path)


def test_from_folder_refuses_a_tokenizer_without_pad_token(tmp_path: Path) -> None:
    trained = TextTokenizer.train(CORPUS, vocab_size=150)
    PreTrainedTokenizerFast(tokenizer_object=trained.tokenizer).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="has no pad token"):
        TextTokenizer.from_folder(tmp_path)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        TextTokenizer.train(CORPUS, kind="sentencepiece")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every text is empty"):
        TextTokenizer.train(["", "  "])
