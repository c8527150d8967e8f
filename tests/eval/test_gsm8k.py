import dataclasses

import pytest

from moeforge.data.corpora import load_corpus
from moeforge.data.records import Record
from moeforge.errors import DataError
from moeforge.eval.gsm8k import extract_answer, generate_answers, gold_answer, gsm8k_accuracy
from tests.eval.memorised import TAUGHT, memorised_model


def test_every_real_gold_answer_extracts_to_the_number_after_the_marks():
    for record in load_corpus("math", "test"):
        answer_line = record.response.split("\n")[-1]
        assert answer_line.startswith("#### ")
        expected = answer_line.removeprefix("#### ").strip().replace(",", "")
        assert extract_answer(record.response) == expected, record.source
        assert gold_answer(record) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 1000 + 234 = 1,234 in all\n#### 1,234", "1234"),
        ("#### $5", "5"),
        ("#### $1,000.00", "1000"),
        ("#### 12.0", "12"),
        ("#### 3.50", "3.5"),
        ("#### -7", "-7"),
        ("#### 42.", "42"),
        ("####42", "42"),
        ("#### 3\nthen again\n#### 4", "4"),
        ("#### 8 apples\nQuestion: 99 more?", "8"),
        ("She pays 5 + 7 = 12 dollars.", "12"),
        ("It costs $2,500.", "2500"),
        ("no numbers here", None),
        ("", None),
        ("Tom had 3 apples.\n#### unknown", None),
    ],
)
def test_extract_answer_normalises_the_number(text, expected):
    assert extract_answer(text) == expected


def test_gold_answer_without_a_final_line_names_the_record():
    record = Record("Question: 1 + 1?\nAnswer:", " it is 2", "data/maths.jsonl:7")
    with pytest.raises(DataError, match=r"data/maths.jsonl:7: .*'#### <number>'"):
        gold_answer(record)


def test_greedy_generation_recites_the_memorised_answers_and_stops_at_eos():
    model, tokenizer = memorised_model()
    generated = generate_answers(model, tokenizer, [r.prompt for r in TAUGHT[:2]], max_new_tokens=48)
    assert generated == [r.response for r in TAUGHT[:2]]


def test_generation_stops_at_the_end_of_the_answer_line():
    model, tokenizer = memorised_model()
    calls = []
    hook = model.get_input_embeddings().register_forward_hook(lambda *args: calls.append(1))
    try:
        [generated] = generate_answers(model, tokenizer, [TAUGHT[2].prompt], max_new_tokens=64)
    finally:
        hook.remove()
    answer = TAUGHT[2].response.split("\nQuestion:")[0]  # what the model learned goes on to a second "####"
    assert generated == answer
    assert extract_answer(generated) == "4"
    assert len(calls) <= len(tokenizer.encode(answer + "\n")) + 1  # it stopped there, not at max_new_tokens


def test_left_padded_batches_generate_what_single_prompts_do():
    model, tokenizer = memorised_model()
    prompts = [r.prompt for r in TAUGHT] + ["Question: A much longer question that the model has never seen?\nAnswer:"]
    assert len({len(tokenizer.encode(p)) for p in prompts}) > 1  # so padding is really exercised
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=24, batch_size=len(prompts))
    single = generate_answers(model, tokenizer, prompts, max_new_tokens=24, batch_size=1)
    assert batched == single


def test_accuracy_is_one_on_memorised_answers_and_zero_on_another_gold():
    model, tokenizer = memorised_model()
    taught = [Record(r.prompt, r.response.split("\nQuestion:")[0], r.source) for r in TAUGHT]
    progress = []
    result = gsm8k_accuracy(model, tokenizer, taught, max_new_tokens=48, batch_size=2, on_progress=lambda *a: progress.append(a))
    assert (result.correct, result.total, result.accuracy) == (3, 3, 1.0)
    assert progress == [(2, 3), (3, 3)]
    assert [g.generated for g in result.examples] == [r.response for r in taught]

    wrong = dataclasses.replace(taught[0], response=" 40 + 1 = 41\n#### 41")
    result = gsm8k_accuracy(model, tokenizer, [wrong], max_new_tokens=48)
    assert (result.correct, result.total, result.accuracy) == (0, 1, 0.0)
    [graded] = result.examples
    assert (graded.gold, graded.predicted, graded.correct) == ("41", "42", False)


def test_accuracy_limit_takes_the_first_records():
    model, tokenizer = memorised_model()
    result = gsm8k_accuracy(model, tokenizer, TAUGHT, limit=2, max_new_tokens=48, shown=1)
    assert (result.correct, result.total) == (2, 2)
    assert [g.prompt for g in result.examples] == [TAUGHT[0].prompt]


def test_accuracy_refuses_a_record_without_a_gold_answer_before_generating():
    model, tokenizer = memorised_model()
    bad = Record("Question: 1 + 1?\nAnswer:", " 2", "mine.jsonl:3")
    with pytest.raises(DataError, match="mine.jsonl:3"):
        gsm8k_accuracy(model, tokenizer, [TAUGHT[0], bad])
