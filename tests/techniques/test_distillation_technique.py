import functools
from dataclasses import replace

import numpy as np
import pytest
import torch

from autocompress.errors import AutocompressError
from autocompress.measure import auc, parameter_count
from autocompress.models import build
from autocompress.techniques.distillation import Config, apply
from autocompress.testing import tiny_setup
from autocompress.train import DistillConfig, TrainConfig, fit, predict

STUDENT_ARCH = {"embedding_dim": 4, "bottom_mlp": [8, 4], "top_mlp": [16]}
# Enough steps for the small student to learn at all (the fixture's recipe gives it 38 steps).
STUDENT_TRAINING = TrainConfig(epochs=1, batch_size=256, lr=1e-2, early_stopping_patience=None)


@functools.cache
def _teacher():
    """The fixture's DLRM trained on until its best validation epoch, as a reference model would be.

    The fixture stops after two short epochs (test AUC 0.76), below what the student reaches
    on labels alone (about 0.79); a teacher worse than its student has nothing to teach.
    """
    setup = tiny_setup("dlrm")
    teacher = setup.model()
    fit(teacher, setup.dataset.train, setup.dataset.valid, replace(STUDENT_TRAINING, epochs=2))
    return teacher


def _student(seed=1):
    torch.manual_seed(seed)
    return build("dlrm", tiny_setup("dlrm").dataset.schema, STUDENT_ARCH)


def test_distilled_student_matches_label_training_and_follows_the_teacher(tmp_path):
    setup = tiny_setup("dlrm")
    test = setup.dataset.test
    teacher = _teacher()
    teacher_logits = predict(teacher, test)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert parameter_count(_student()) < parameter_count(teacher) / 3

    config = Config(temperature=2.0, alpha=0.5, epochs=3)
    ctx = setup.context(tmp_path, teacher=teacher, train_config=STUDENT_TRAINING)
    distilled = apply(_student(), config, ctx)
    labels_only = _student()
    fit(labels_only, setup.dataset.train, setup.dataset.valid, replace(STUDENT_TRAINING, epochs=3))

    distilled_logits, plain_logits = predict(distilled, test), predict(labels_only, test)
    # 1200 test rows: the AUC's standard error is about 0.013; measured 0.798 against 0.792
    assert auc(test.labels, distilled_logits) >= auc(test.labels, plain_logits) - 0.01
    assert auc(test.labels, distilled_logits) > 0.75
    follows = np.corrcoef(distilled_logits, teacher_logits)[0, 1]
    alone = np.corrcoef(plain_logits, teacher_logits)[0, 1]
    assert follows > alone + 0.05  # measured: 0.72 against 0.64
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())
    assert ctx.distill == DistillConfig(temperature=2.0, alpha=0.5)


def test_missing_teacher_and_self_teaching_are_refused(tmp_path):
    setup = tiny_setup("dlrm")
    with pytest.raises(AutocompressError, match=r"distillation: no teacher.*ctx\.teacher is None"):
        apply(_student(), Config(), setup.context(tmp_path, teacher=None))
    model = setup.model()
    with pytest.raises(AutocompressError, match="the student is the teacher itself"):
        apply(model, Config(), setup.context(tmp_path, teacher=model))
    with pytest.raises(AutocompressError, match=r"needs training and validation data"):
        apply(_student(), Config(), setup.context(tmp_path, train=None))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"temperature": 0.0}, "distillation.temperature: must be a finite number > 0, got 0.0"),
        ({"temperature": float("inf")}, "distillation.temperature: must be a finite number > 0"),
        ({"alpha": 1.5}, "distillation.alpha: must be in [0, 1], got 1.5"),
        ({"epochs": 0}, "distillation.epochs: must be an integer >= 1, got 0"),
        ({"epochs": True}, "distillation.epochs: must be an integer >= 1"),
    ],
)
def test_bad_values_are_refused_naming_the_field(data, message):
    with pytest.raises(AutocompressError) as err:
        Config.from_dict(data)
    assert message in str(err.value)
