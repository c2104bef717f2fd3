"""Text for retrieval: a subword tokenizer trained or loaded, and the sentence-transformers export.

Importing this package does not import transformers or sentence-transformers (seconds each):
the data side needs only the tokenizer; the export imports them when it runs.
"""

from dist_contrast.text.st_export import ExportableBody, export_sentence_transformers
from dist_contrast.text.tokenizer import SPECIAL_TOKENS, TextTokenizer, TokenizerKind

__all__ = [
    "SPECIAL_TOKENS",
    "ExportableBody",
    "TextTokenizer",
    "TokenizerKind",
    "export_sentence_transformers",
]
