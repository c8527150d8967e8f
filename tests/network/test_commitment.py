import hashlib

import pytest

from moeforge.errors import PayloadError
from moeforge.network.commitment import (
    MAX_CHAIN_PAYLOAD, CommitPayload, JobPayload, Malformed, ResultPayload, RevealPayload, commitment, decode_commitment,
    decode_job, decode_result, decode_reveal, encode_commitment, encode_job, encode_result, encode_reveal, verify_commitment,
)

DIGEST = hashlib.sha256(b"a delta").hexdigest()
ALICE, MALLORY = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"


def test_commitment_binds_the_digest_the_hotkey_and_the_round():
    c = commitment(DIGEST, ALICE, 7)
    assert len(c) == 32 and c == commitment(DIGEST.upper(), ALICE, 7)
    assert verify_commitment(c, DIGEST, ALICE, 7)
    assert not verify_commitment(c, DIGEST, MALLORY, 7)  # a copied commitment does not verify for another hotkey
    assert not verify_commitment(c, DIGEST, ALICE, 8)
    assert not verify_commitment(c, hashlib.sha256(b"another").hexdigest(), ALICE, 7)
    assert not verify_commitment(c, "not-a-digest", ALICE, 7)


def test_commitment_encoding_is_unambiguous_across_field_boundaries():
    # hotkey 'ab' at round r must not collide with hotkey 'a' whose next byte happens to be 'b'
    assert commitment(DIGEST, "ab", 1) != commitment(DIGEST, "a", 1)
    assert len({commitment(DIGEST, ALICE, r) for r in range(50)}) == 50


def test_payloads_round_trip_and_fit_the_chain_limit():
    c = commitment(DIGEST, ALICE, 3)
    commit_payload, reveal_payload = encode_commitment(c, 3), encode_reveal(DIGEST, 3)
    assert len(commit_payload) <= MAX_CHAIN_PAYLOAD and len(reveal_payload) <= MAX_CHAIN_PAYLOAD
    assert decode_commitment(commit_payload) == CommitPayload(round=3, commitment=c)
    assert decode_commitment(commit_payload.hex()) == CommitPayload(round=3, commitment=c)
    assert decode_reveal(reveal_payload) == RevealPayload(round=3, digest=DIGEST)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "0 bytes"),
        (b"\x00" * 500, "500 bytes"),
        ("not hex at all", "not hex"),
        (bytes([9, 1]) + b"\x00" * 40, "version 9"),
        (None, "NoneType"),
    ],
)
def test_garbage_decodes_to_malformed_naming_the_problem(payload, reason):
    got = decode_commitment(payload)
    assert isinstance(got, Malformed) and reason in got.reason


def test_a_reveal_is_not_accepted_as_a_commitment_or_the_reverse():
    reveal = encode_reveal(DIGEST, 1)
    assert isinstance(decode_commitment(reveal), Malformed) and "expected commit" in decode_commitment(reveal).reason
    commit = encode_commitment(commitment(DIGEST, ALICE, 1), 1)
    assert isinstance(decode_reveal(commit), Malformed)


def test_bad_inputs_to_the_encoder_raise_payload_errors_naming_them():
    with pytest.raises(PayloadError, match="64 hex characters"):
        commitment("abc", ALICE, 1)
    with pytest.raises(PayloadError, match="round"):
        commitment(DIGEST, ALICE, -1)
    with pytest.raises(PayloadError, match="32 bytes"):
        encode_commitment(b"short", 1)


def test_result_and_job_payloads_round_trip_fit_the_chain_and_are_not_taken_for_each_other():
    other = "cd" * 32
    result, job = encode_result(DIGEST, other, 4), encode_job(DIGEST)
    assert len(result) <= MAX_CHAIN_PAYLOAD and len(job) <= MAX_CHAIN_PAYLOAD
    assert decode_result(result) == ResultPayload(round=4, state_sha256=DIGEST, report=other)
    assert decode_job(job) == JobPayload(job=DIGEST)
    for payload, decode in ((result, decode_commitment), (result, decode_job), (job, decode_result), (job, decode_reveal)):
        assert isinstance(decode(payload), Malformed)
