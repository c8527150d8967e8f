"""Extraction for miners: expert slices and the reduced models a miner trains against."""
