"""The release spec's quantized-export fields."""

import pytest
from pydantic import ValidationError

from kollm.config import ExportsSpec


def test_quantized_exports_are_off_by_default_and_can_be_asked_for(tmp_path):
    assert not ExportsSpec().gptq and not ExportsSpec().bnb_4bit and not ExportsSpec().quality_report
    spec = ExportsSpec.model_validate(
        {"gptq": True, "gptq_calibration": str(tmp_path / "sft.jsonl"), "bnb_4bit": True, "quality_report": True}
    )
    assert spec.gptq and spec.bnb_4bit and spec.gptq_calibration == tmp_path / "sft.jsonl"


@pytest.mark.parametrize("bad", [{"gptq_samples": 0}, {"bnb4bit": True}, {"gptq": "yes please"}])
def test_bad_quantized_export_fields_are_rejected(bad):
    with pytest.raises(ValidationError):
        ExportsSpec.model_validate(bad)
