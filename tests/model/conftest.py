import pytest

from tests.model.tiny import TINY


@pytest.fixture(params=sorted(TINY))
def model_type(request) -> str:
    """Each supported MoE family in turn."""
    return request.param
