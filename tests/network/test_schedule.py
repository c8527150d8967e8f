import pytest
from pydantic import ValidationError

from moeforge.errors import ConfigError
from moeforge.network.schedule import Phase, RoundSchedule

S = RoundSchedule(start_block=100, train_blocks=10, commit_blocks=3, reveal_blocks=4, score_blocks=5)


def test_deadlines_of_a_round_are_inclusive_block_numbers():
    assert S.round_blocks == 22
    assert S.round_start(0) == 100 and S.round_start(2) == 144
    assert S.commit_deadline(0) == 112  # 100..109 train, 110..112 commit
    assert S.reveal_deadline(0) == 116  # 113..116 reveal
    assert S.seed_block(0) == 117       # first score block
    assert S.round_end(0) == 121 and S.round_end(0) + 1 == S.round_start(1)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (100, (0, Phase.TRAIN)), (109, (0, Phase.TRAIN)),
        (110, (0, Phase.COMMIT)), (112, (0, Phase.COMMIT)),
        (113, (0, Phase.REVEAL)), (116, (0, Phase.REVEAL)),
        (117, (0, Phase.SCORE)), (121, (0, Phase.SCORE)),
        (122, (1, Phase.TRAIN)), (122 + 22 * 5 + 12, (6, Phase.COMMIT)),
    ],
)
def test_phase_at_boundary_blocks(block, expected):
    assert S.phase_at(block) == expected


def test_every_block_of_a_round_has_exactly_the_phase_its_deadlines_imply():
    for r in range(3):
        for block in range(S.round_start(r), S.round_end(r) + 1):
            got_round, phase = S.phase_at(block)
            assert got_round == r
            assert (phase in (Phase.TRAIN, Phase.COMMIT)) == (block <= S.commit_deadline(r))
            assert (phase == Phase.REVEAL) == (S.commit_deadline(r) < block <= S.reveal_deadline(r))
            assert S.commit_counts(r, block) == (block <= S.commit_deadline(r))
            assert S.reveal_counts(r, block) == (block <= S.reveal_deadline(r))
    assert not S.commit_counts(1, S.round_end(0))  # a commitment from the previous round does not count


def test_block_before_the_schedule_is_an_error_naming_the_start():
    with pytest.raises(ConfigError, match="block 99 is before .* starts at block 100"):
        S.phase_at(99)
    with pytest.raises(ConfigError, match="round -1"):
        S.round_start(-1)


def test_schedule_refuses_empty_phases_and_unknown_fields():
    with pytest.raises(ValidationError):
        RoundSchedule(start_block=0, train_blocks=0, commit_blocks=1, reveal_blocks=1, score_blocks=1)
    with pytest.raises(ValidationError):
        RoundSchedule(start_block=0, train_blocks=1, commit_blocks=1, reveal_blocks=1, score_blocks=1, trian_blocks=3)


def test_schedule_round_trips_through_json():
    assert RoundSchedule.model_validate_json(S.model_dump_json()) == S
