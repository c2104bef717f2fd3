"""Text for retrieval: a subword tokenizer trained or loaded.

Importing this package does not import transformers (seconds): the data side needs only the
tokenizer.
"""

from dist_contrast.text.tokenizer import SPECIAL_TOKENS, TextTokenizer, TokenizerKind

__all__ = ["SPECIAL_TOKENS", "TextTokenizer", "TokenizerKind"]
