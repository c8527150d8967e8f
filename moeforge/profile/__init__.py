"""Routing statistics of a base model on domain data, and ESFT expert selection from them."""
