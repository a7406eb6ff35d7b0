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


def test_finetuning_learns_from_the_teacher_at_a_tenth_of_the_rate_by_default(tmp_path):
    import numpy as np

    from autocompress.models import build
    from autocompress.techniques import TechniqueContext
    from autocompress.train import TrainConfig, predict

    setup = tiny_setup("dlrm")
    data = setup.dataset
    student = build("dlrm", data.schema, {"embedding_dim": 4, "bottom_mlp": [4], "top_mlp": [8]})
    ctx = TechniqueContext(
        schema=data.schema,
        work_dir=tmp_path,
        train=data.train,
        valid=data.valid,
        train_config=TrainConfig(epochs=1, lr=0.1, batch_size=256, early_stopping_patience=None),
        teacher=setup.trained,
    )
    teacher_logits = predict(setup.trained, data.test)
    before = np.corrcoef(predict(student, data.test), teacher_logits)[0, 1]
    result = ctx.finetune(student, epochs=3)
    assert result is not None and [h.lr for h in result.history] == pytest.approx([0.01] * 3)
    after = np.corrcoef(predict(student, data.test), teacher_logits)[0, 1]
    assert after > max(before, 0.0) + 0.3  # it learned the teacher's scores


def test_int8_mlp_after_4_bit_tables_on_din(tmp_path):
    """A MatMul fed by quantized tables (DIN's attention) still quantizes and runs."""
    import numpy as np

    from autocompress.export import create_session, feed

    setup = tiny_setup("din")
    ctx = setup.context(tmp_path)
    policy = Policy.from_dict(
        {
            "steps": [
                {"technique": "embedding_quantization", "bits": 4, "min_rows": 0},
                {"technique": "dynamic_int8"},
            ]
        }
    )
    result = apply_policy(setup.model(), policy, ctx)
    session = create_session(result.onnx_path, ctx.target)
    out = session.run(None, feed(session, ctx.calibration_batch(9)))[0]
    assert out.shape == (9,) and np.isfinite(out).all()
