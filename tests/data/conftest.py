"""Fixtures for the data tests: a tiny byte-level BPE tokenizer trained in memory."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: Natalia sold 48 clips in April and half as many in May. How many in all?",
    "Answer: 48 + 24 = 72 clips.\n#### 72",
    "Doctor: What brings you in today? Patient: A refill of my blood pressure medicine.",
]


def build_tokenizer(eos_token: str | None = "<eos>") -> PreTrainedTokenizerFast:
    """Byte-level BPE with ~300 tokens; any text encodes (byte fallback via the ByteLevel alphabet)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos_token, pad_token="<pad>")


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tokenizer_without_eos() -> PreTrainedTokenizerFast:
    return build_tokenizer(eos_token=None)
