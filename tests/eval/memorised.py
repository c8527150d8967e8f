"""A tiny DeepSeek-V2-class model trained for seconds until it recites a few GSM8K-style answers.

Built once per process; tests read it and never train it further.
"""

import functools

import torch
from transformers import AutoModelForCausalLM

from moeforge.data.corpora import load_corpus
from moeforge.data.formatting import IGNORE_INDEX, encode_records
from moeforge.data.records import Record
from moeforge.testbed.config import TestbedConfig, deepseek_config
from moeforge.testbed.pretrain import pretrain
from moeforge.testbed.tokenizer import train_tokenizer

# What the model learns to write after each prompt; the third goes on past its "####" line.
TAUGHT = (
    Record("Question: Tom has 40 apples and buys 2 more. How many apples does he have?\nAnswer:",
           " 40 + 2 = 42\n#### 42", "taught:1"),
    Record("Question: Ann has 3 bags of 5 pens. How many pens?\nAnswer:", " 3 * 5 = 15\n#### 15", "taught:2"),
    Record("Question: Bo has 2 cats and gets 2 more. How many cats?\nAnswer:",
           " 2 + 2 = 4\n#### 4\nQuestion: And 9?\n#### 9", "taught:3"),
)
CONFIG = TestbedConfig(
    vocab_size=320, hidden_size=32, num_layers=2, num_experts=4, top_k=2, moe_intermediate_size=16,
    num_heads=2, seq_len=128,
)


@functools.lru_cache(maxsize=1)
def memorised_model():
    """(model, tokenizer): the model greedily completes each TAUGHT prompt with its response, then eos."""
    texts = [r.text for r in load_corpus("math", "train")[:200]] + [r.text for r in TAUGHT]
    tokenizer = train_tokenizer(texts, CONFIG.vocab_size)
    torch.manual_seed(0)
    config = deepseek_config(CONFIG, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    examples = encode_records([Record("", r.text, r.source) for r in TAUGHT], tokenizer)  # every token learned
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), tokenizer.pad_token_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    for row, e in enumerate(examples):
        input_ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights on every machine, and no thread contention on a busy one
    try:
        pretrain(
            model, input_ids, labels, steps=60, batch_size=len(examples), lr=1e-2, warmup_steps=5,
            weight_decay=0.0, aux_loss_coef=0.0, seed=0,
        )
    finally:
        torch.set_num_threads(threads)
    return model, tokenizer
