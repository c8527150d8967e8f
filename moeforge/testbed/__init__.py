"""The testbed: a byte-level BPE tokenizer and a small DeepSeek-V2-class MoE trained on CPU."""
