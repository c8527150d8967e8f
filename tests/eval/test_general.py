import math

import pytest

from moeforge.data.corpora import load_corpus
from moeforge.eval.domain import packed_rows
from moeforge.eval.general import general_perplexity
from moeforge.model.loss import mean_token_loss
from tests.eval.memorised import memorised_model


def test_perplexity_is_exp_loss_over_the_first_whole_rows_of_wikitext():
    model, tokenizer = memorised_model()
    result = general_perplexity(model, tokenizer, seq_len=32, max_tokens=100)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert result.tokens == 3 * 31 <= 100  # three whole rows, every token after the first of each scored


def test_scored_rows_are_the_start_of_the_wikitext_test_file():
    model, tokenizer = memorised_model()
    text = load_corpus("wikitext", "test")[0].text
    input_ids, labels = packed_rows(tokenizer, load_corpus("wikitext", "test"), seq_len=32, max_tokens=100)
    assert (labels == input_ids).all()  # plain text: nothing masked
    assert text.startswith(tokenizer.decode(input_ids.reshape(-1)))
    result = general_perplexity(model, tokenizer, seq_len=32, max_tokens=100, batch_size=2)
    assert result.loss == pytest.approx(mean_token_loss(model, input_ids, labels), rel=1e-6)
