"""Subword tokenization for text retrieval: one object that trains, saves, loads and encodes.

A run trains its tokenizer once on the driver and ships it to the workers, saves it with the
checkpoints and inside the MLflow model, and the exported sentence-transformers folder must
tokenize exactly as training did. So everything goes through one ``tokenizers.Tokenizer`` whose
JSON is the single source of truth: ``save`` writes it as a Hugging Face tokenizer folder
(``tokenizer.json`` and a ``tokenizer_config.json`` naming the special tokens), which
``from_folder`` (and ``transformers.AutoTokenizer``) read back.

The ``tokenizers`` WordPiece trainer is not deterministic: it numbers the ``##`` continuation
pieces in the order a hash map yields the words, and merges with equal counts are then chosen
by those numbers, so two trainings on the same texts give different vocabularies. ``train``
fixes their ids first (sorted, as reserved tokens right after the special ones) and rebuilds
the model from the trained vocabulary without them being special.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers as tk_trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TokenizerKind = Literal["wordpiece", "bpe"]
KINDS: tuple[TokenizerKind, ...] = ("wordpiece", "bpe")

# The special tokens of a trained tokenizer, in id order: [PAD] is 0, [UNK] 1, ... [MASK] 4.
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Their roles, as transformers names them in tokenizer_config.json.
_ROLES: tuple[str, ...] = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_MAP_FILE = "special_tokens_map.json"  # transformers 4.x writes the roles here too


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _clone(tokenizer: Tokenizer) -> Tokenizer:
    return Tokenizer.from_str(tokenizer.to_str())


def _continuation_chars(texts: Sequence[str], tokenizer: Tokenizer) -> list[str]:
    """The characters that can continue a word: those of the normalised texts that the
    pre-tokenizer keeps inside a word (letters, digits; not punctuation or spaces), sorted.

    A superset of the ones the WordPiece trainer gives a ``##`` piece (a letter that only ever
    starts words gets one too), found from the texts' alphabet rather than by normalising and
    splitting every text again: BERT's normalisation works character by character. (Each
    character is also normalised after a letter, in case lower-casing ever follows Unicode's
    one contextual rule, the final sigma: ΟΔΟΣ → οδος.)
    """
    normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
    assert normalizer is not None and pre_tokenizer is not None
    alphabet: set[str] = set()
    for text in texts:
        alphabet.update(text)
    normalized: set[str] = set()
    for char in alphabet:
        normalized.update(normalizer.normalize_str(char))
        normalized.update(normalizer.normalize_str("A" + char))
    # Doubled, a character that continues words stays one word: punctuation, spaces and CJK
    # characters (spaced out by the normaliser) do not.
    return sorted(
        c for c in normalized
        if len(pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(c + c))) == 1
    )


def _special_token(value: Any) -> str | None:
    """A role's token in a transformers config: a string, or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` plus the special tokens a model needs (pad, cls, sep, ...).

    ``special`` maps transformers' role names (``pad_token``, ``cls_token``, ``sep_token``,
    ``unk_token``, ``mask_token``) to token strings in the vocabulary; a pad token is required,
    the others are optional. Build one with ``train``, ``from_folder``, ``load`` or
    ``from_json`` rather than directly.
    """

    def __init__(self, tokenizer: Tokenizer, special: dict[str, str]) -> None:
        if "pad_token" not in special:
            raise ValueError("the tokenizer has no pad token: name one (pad_token) to pad with")
        for role, token in special.items():
            if tokenizer.token_to_id(token) is None:
                raise ValueError(f"the tokenizer's {role} {token!r} is not in its vocabulary")
        # Padding and truncation are per call (encode); the saved tokenizer carries neither.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.special = dict(special)
        self._encoders: dict[int, Tokenizer] = {}

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        kind: TokenizerKind = "wordpiece",
        vocab_size: int = 8000,
        lowercase: bool = True,
    ) -> TextTokenizer:
        """A ``kind`` subword tokenizer of at most ``vocab_size`` tokens learnt from ``texts``.

        Text is normalised as BERT does (control characters removed, accents stripped when
        lower-casing) and split on whitespace and on every punctuation character, so
        ``read_csv(path)`` gives the words ``read _ csv ( path )``. The same texts give the
        same vocabulary and ids, in any process. The vocabulary may exceed ``vocab_size`` when
        the texts' characters alone need more. The texts are held in memory while training:
        pass a sample of a large corpus.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}: use one of {', '.join(KINDS)}")
        least = len(SPECIAL_TOKENS) + 1
        if vocab_size < least:
            raise ValueError(f"vocab_size must be at least {least}, not {vocab_size}")
        corpus = list(texts)
        if not any(text.strip() for text in corpus):
            raise ValueError("no text to train the tokenizer on: every text is empty")
        unk = SPECIAL_TOKENS[1]
        model: models.Model = (
            models.WordPiece(unk_token=unk) if kind == "wordpiece" else models.BPE(unk_token=unk)
        )
        tokenizer = Tokenizer(model)
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        if kind == "wordpiece":
            reserved = ["##" + char for char in _continuation_chars(corpus, tokenizer)]
            trainer: tk_trainers.Trainer = tk_trainers.WordPieceTrainer(
                vocab_size=vocab_size,
                special_tokens=[*SPECIAL_TOKENS, *reserved],
                show_progress=False,
            )
            tokenizer.train_from_iterator(corpus, trainer=trainer)
            # Rebuilt from the vocabulary: the reserved pieces must not stay special (special
            # tokens are matched in raw text and skipped when decoding).
            trained = tokenizer
            tokenizer = Tokenizer(models.WordPiece(trained.get_vocab(), unk_token=unk))
            tokenizer.normalizer = trained.normalizer
            tokenizer.pre_tokenizer = trained.pre_tokenizer
            tokenizer.decoder = decoders.WordPiece()
            tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
        else:
            # The BPE trainer numbers its alphabet sorted and breaks ties by those numbers:
            # deterministic as it is.
            trainer = tk_trainers.BpeTrainer(
                vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
            )
            tokenizer.train_from_iterator(corpus, trainer=trainer)
        cls_token, sep_token = SPECIAL_TOKENS[2], SPECIAL_TOKENS[3]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls_token} $A {sep_token}",
            pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
            special_tokens=[(t, tokenizer.token_to_id(t)) for t in (cls_token, sep_token)],
        )
        return cls(tokenizer, dict(zip(_ROLES, SPECIAL_TOKENS, strict=True)))

    @classmethod
    def from_folder(cls, path: str | Path) -> TextTokenizer:
        """The fast tokenizer of a local Hugging Face folder (``tokenizer.json``, with the
        special tokens named in ``tokenizer_config.json`` or ``special_tokens_map.json``), as
        ``save_pretrained`` or ``TextTokenizer.save`` writes it.

        The ids of pad, cls and sep are the folder's, whatever they are. When the tokenizer has
        no post-processor but has cls and sep tokens, ``encode(special_tokens=True)`` puts them
        around the text as BERT does.
        """
        folder = Path(path)
        file = folder / TOKENIZER_FILE
        if not file.is_file():
            what = "no folder" if not folder.is_dir() else f"no {TOKENIZER_FILE} in the folder"
            raise ValueError(
                f"no tokenizer at {folder} ({what}): pass a folder where a fast tokenizer was "
                f"saved (tokenizer.save_pretrained(folder) or TextTokenizer.save(folder))"
            )
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as error:
            raise ValueError(
                f"{file} is not a tokenizers file ({_one_line(error)}): save the tokenizer "
                f"again with save_pretrained from a fast tokenizer"
            ) from None
        special: dict[str, str] = {}
        for name in (_SPECIAL_MAP_FILE, CONFIG_FILE):  # the config wins where both name a role
            config = folder / name
            if not config.is_file():
                continue
            try:
                values = json.loads(config.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"{config} is not readable JSON ({_one_line(error)})") from None
            for role in _ROLES:
                token = _special_token(values.get(role)) if isinstance(values, dict) else None
                if token is not None:
                    special[role] = token
        padding = tokenizer.padding
        if "pad_token" not in special and padding and padding.get("pad_token"):
            special["pad_token"] = padding["pad_token"]
        if "pad_token" not in special:
            raise ValueError(
                f"the tokenizer in {folder} has no pad token: set one (tokenizer.pad_token = "
                f"...) and save it again, or add pad_token to its {CONFIG_FILE}"
            )
        for role, token in list(special.items()):
            if tokenizer.token_to_id(token) is None:
                if role == "pad_token":
                    raise ValueError(
                        f"the pad token {token!r} of the tokenizer in {folder} is not in its "
                        f"vocabulary: set a pad token the tokenizer knows and save it again"
                    )
                del special[role]  # an unused role naming a token the vocabulary lacks
        if tokenizer.post_processor is None and {"cls_token", "sep_token"} <= special.keys():
            cls_token, sep_token = special["cls_token"], special["sep_token"]
            cls_id, sep_id = tokenizer.token_to_id(cls_token), tokenizer.token_to_id(sep_token)
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{cls_token} $A {sep_token}",
                pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
                special_tokens=[(cls_token, cls_id), (sep_token, sep_id)],
            )
        return cls(tokenizer, special)

    # -- saving --------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder`` (created if
        needed): a Hugging Face tokenizer folder that ``load``, ``from_folder`` and
        ``transformers.AutoTokenizer`` read. Returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TOKENIZER_FILE).write_text(self.tokenizer.to_str())
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TextTokenizer:
        """A tokenizer written by ``save`` (the same as ``from_folder``)."""
        return cls.from_folder(folder)

    def to_json(self) -> str:
        """The whole tokenizer as one JSON string (``from_json`` reads it back)."""
        tokenizer = json.loads(self.tokenizer.to_str())
        return json.dumps({"tokenizer": tokenizer, "special": self.special})

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        """A tokenizer from ``to_json``'s string."""
        try:
            data = json.loads(text)
            tokenizer = Tokenizer.from_str(json.dumps(data["tokenizer"]))
            special = {str(role): str(token) for role, token in data["special"].items()}
        except Exception as error:
            raise ValueError(
                f"not a TextTokenizer JSON ({_one_line(error)}): pass the string to_json returned"
            ) from None
        return cls(tokenizer, special)

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to Ray workers and DataLoader processes: the per-length copies are rebuilt there.
        return {"tokenizer": self.tokenizer, "special": self.special}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tokenizer = state["tokenizer"]
        self.special = state["special"]
        self._encoders = {}

    # -- encoding ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids (special tokens included): the embedding table's size."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _id(self, role: str) -> int | None:
        token = self.special.get(role)
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def pad_id(self) -> int:
        pad_id = self._id("pad_token")
        assert pad_id is not None  # checked at construction
        return pad_id

    @property
    def cls_id(self) -> int | None:
        return self._id("cls_token")

    @property
    def sep_id(self) -> int | None:
        return self._id("sep_token")

    def _encoder(self, max_length: int) -> Tokenizer:
        """A copy that truncates and pads to ``max_length`` (the saved tokenizer does neither)."""
        encoder = self._encoders.get(max_length)
        if encoder is None:
            encoder = _clone(self.tokenizer)
            encoder.enable_truncation(max_length)
            encoder.enable_padding(
                length=max_length, pad_id=self.pad_id, pad_token=self.special["pad_token"]
            )
            self._encoders[max_length] = encoder
        return encoder

    def encode(
        self, texts: Sequence[str], max_length: int, special_tokens: bool = False
    ) -> torch.Tensor:
        """Token ids of each text, cut to ``max_length`` and right-padded with ``pad_id``.

        With ``special_tokens`` the tokenizer's post-processing applies (``[CLS] ... [SEP]`` for
        a trained one), still within ``max_length``: what a transformer was trained on.

        Shape: -> [len(texts), max_length] int64.
        """
        if max_length < (3 if special_tokens else 1):
            least = "3 with special tokens" if special_tokens else "1"
            raise ValueError(f"max_length must be at least {least}, not {max_length}")
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        encodings = self._encoder(max_length).encode_batch(
            list(texts), add_special_tokens=special_tokens
        )
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        return torch.from_numpy(ids.reshape(len(encodings), max_length))

    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's tokens as strings, without special tokens, truncation or padding."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.tokens for encoding in encodings]

    def as_hf_tokenizer(self, max_length: int) -> PreTrainedTokenizerFast:
        """A transformers fast tokenizer giving the ids of ``encode(..., special_tokens=True)``
        when called with ``truncation=True`` (padding on the right with the same pad id)."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(
            tokenizer_object=_clone(self.tokenizer),
            model_max_length=max_length,
            padding_side="right",
            truncation_side="right",
            **self.special,
        )
