"""Evaluation of a model on a domain and against forgetting: held-out loss, WikiText-2 perplexity, GSM8K."""
