import pytest

from autocompress.errors import AutocompressError
from autocompress.techniques import Policy, TechniqueConfig, apply_policy, config_from_dict, technique_names
from autocompress.testing import tiny_setup


def test_policy_round_trips_and_loads_only_registered_techniques():
    policy = Policy.from_dict({"steps": [{"technique": "dynamic_int8", "per_channel": True}]})
    assert Policy.from_dict(policy.to_dict()) == policy
    with pytest.raises(AutocompressError, match=r"unknown technique 'os\.system'; known"):
        Policy.from_dict({"steps": [{"technique": "os.system"}]})
    with pytest.raises(AutocompressError, match="'technique' key"):
        config_from_dict({"per_channel": True})
    with pytest.raises(AutocompressError, match=r"policy: unknown field\(s\) \['stages'\]"):
        Policy.from_dict({"stages": []})


def test_every_registered_config_is_a_technique_config():
    from autocompress.techniques import config_class

    for name in technique_names():
        cls = config_class(name)
        assert issubclass(cls, TechniqueConfig) and cls.name == name
        assert cls().version == cls.VERSION


def test_apply_policy_exports_then_rewrites_the_graph(tmp_path):
    from autocompress.measure import onnx_size_bytes

    setup = tiny_setup("dlrm")
    plain = apply_policy(setup.model(), Policy(()), setup.context(tmp_path / "a"))
    quantized = apply_policy(
        setup.model(),
        Policy.from_dict(
            {"steps": [{"technique": "dynamic_int8", "op_types": ["MatMul", "Gemm", "Gather"]}]}
        ),
        setup.context(tmp_path / "b"),
    )
    assert quantized.applied == ["dynamic_int8"]
    assert onnx_size_bytes(quantized.onnx_path) < 0.4 * onnx_size_bytes(plain.onnx_path)
