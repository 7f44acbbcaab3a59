"""Task metrics over no rows fail with the reason, not a KeyError."""

import pytest

from pipeline.train.tasks import AutoencoderTask, ClassificationTask


@pytest.mark.parametrize("task", [ClassificationTask(), AutoencoderTask()], ids=["classifier", "autoencoder"])
@pytest.mark.parametrize("sums", [{}, {"n": 0.0}])
def test_empty_validation_split_is_a_clear_error(task, sums):
    with pytest.raises(ValueError, match="validation split is empty"):
        task.finalize(sums)
