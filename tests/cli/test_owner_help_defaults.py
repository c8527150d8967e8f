"""`moeforge owner --help` and `network up --help` state the real defaults, not numbers that drifted from them."""

import re

import pytest

from moeforge.cli import network as cli_network
from moeforge.cli import owner as cli_owner
from moeforge.network.local import LOCKSTEP_SCHEDULE
from moeforge.network.owner import JobRequest

DEFAULTS = {  # option alias in cli/owner.py → the JobRequest default it stands for
    "RoundsOpt": JobRequest.model_fields["rounds"].default,
    "InnerStepsOpt": JobRequest.model_fields["inner_steps"].default,
    "LrOpt": JobRequest.model_fields["train"].default.lr,
    "BlockSecondsOpt": JobRequest.model_fields["block_seconds"].default,
    "TrainBlocksOpt": JobRequest.model_fields["train_blocks"].default,
    "ScoreBlocksOpt": JobRequest.model_fields["score_blocks"].default,
}


@pytest.mark.parametrize("alias", sorted(DEFAULTS))
def test_each_owner_flag_help_names_the_job_requests_default(alias):
    (option,) = getattr(cli_owner, alias).__metadata__
    stated = re.search(r"\[default: ([^\]]+)\]", option.help)
    assert stated is not None, option.help
    assert float(stated.group(1)) == float(DEFAULTS[alias]), f"{alias}: help says {stated.group(1)}, JobRequest {DEFAULTS[alias]}"


@pytest.mark.parametrize("alias, field", [("BlockSecondsOpt", "block_seconds"), ("TrainBlocksOpt", "train_blocks"),
                                          ("ScoreBlocksOpt", "score_blocks")])
def test_network_up_flag_help_names_the_lockstep_schedules_default(alias, field):
    (option,) = getattr(cli_network, alias).__metadata__
    stated = re.search(r"\[default: ([^\]]+)\]", option.help)
    assert stated is not None and float(stated.group(1)) == float(LOCKSTEP_SCHEDULE[field]), option.help
