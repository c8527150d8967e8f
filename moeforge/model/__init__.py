"""One view over Hugging Face MoE causal LMs: families, loading, experts, routing, sizing."""
