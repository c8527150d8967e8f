from transformers import AutoTokenizer

from moeforge.testbed.tokenizer import EOS, PAD, train_tokenizer

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "The patient reports mild chest pain since Tuesday.",
    " = Homarus gammarus = \n The European lobster is a species of clawed lobster .",
] * 20


def test_training_is_deterministic():
    a, b = train_tokenizer(TEXTS, 300), train_tokenizer(TEXTS, 300)
    assert a.get_vocab() == b.get_vocab()


def test_byte_level_round_trips_any_text():
    tok = train_tokenizer(TEXTS, 300)
    for text in ["naïve café — 数学 ∑ 🙂", "\t\tif x:\n\t\t\tpass\n", "  two  spaces  "]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_saved_tokenizer_loads_with_autotokenizer(tmp_path):
    tok = train_tokenizer(TEXTS, 300)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.eos_token == EOS and loaded.pad_token == PAD
    assert loaded("return a + b")["input_ids"] == tok("return a + b")["input_ids"]
    assert len(loaded) == len(tok) <= 300
