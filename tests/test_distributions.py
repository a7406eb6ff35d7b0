import pytest

from autocompress.distributions import Categorical, Distribution, FloatRange, IntRange
from autocompress.errors import AutocompressError


@pytest.mark.parametrize(
    "dist",
    [
        Categorical([1, "a", [2, 3], None]),
        IntRange(1, 9, step=2),
        IntRange(2, 64, log=True),
        FloatRange(0.1, 0.9),
    ],
)
def test_round_trip_and_contains(dist):
    assert Distribution.from_dict(dist.to_dict()) == dist
    assert dist.contains(dist.to_dict().get("low", 1))


def test_bad_distributions_are_named():
    with pytest.raises(AutocompressError, match="must not be empty"):
        Categorical([])
    with pytest.raises(AutocompressError, match=r"low \(5\) > high \(1\)"):
        IntRange(5, 1)
    with pytest.raises(AutocompressError, match="log range needs low > 0"):
        FloatRange(0.0, 1.0, log=True)
    with pytest.raises(AutocompressError, match="kind 'normal' is not one of"):
        Distribution.from_dict({"kind": "normal"})
    with pytest.raises(AutocompressError, match=r"unknown field\(s\) \['mean'\]"):
        Distribution.from_dict({"kind": "float", "low": 0, "high": 1, "mean": 0.5})
    assert IntRange(1, 9, step=2).contains(3) and not IntRange(1, 9, step=2).contains(4)
