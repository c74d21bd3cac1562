"""The project's bar for reduced precision is judged on the image (PSNR mean and worst); code agreement is
reported and gated only when asked."""
from export.fidelity import REDUCED_PRECISION_BAR, FidelityBar


def summary(mean=50.0, worst=42.0, codes=0.9, nonfinite=0):
    return {"psnr_mean": mean, "psnr_worst": worst, "code_agreement_mean": codes, "nonfinite": nonfinite}


def test_image_fidelity_passes_even_with_flipped_codes():
    assert REDUCED_PRECISION_BAR.failures(summary()) == []
    assert REDUCED_PRECISION_BAR.failures(summary(codes=None)) == []


def test_each_image_criterion_fails_alone():
    assert [f for f in REDUCED_PRECISION_BAR.failures(summary(mean=44.9)) if "mean PSNR" in f]
    assert [f for f in REDUCED_PRECISION_BAR.failures(summary(worst=39.9)) if "worst PSNR" in f]
    assert [f for f in REDUCED_PRECISION_BAR.failures(summary(nonfinite=3)) if "NaN" in f]


def test_code_agreement_gated_only_when_asked():
    strict = FidelityBar(code_agreement=0.99)
    assert [f for f in strict.failures(summary(codes=0.9)) if "code agreement" in f]
    assert "code agreement" in strict.describe() and "code agreement" not in REDUCED_PRECISION_BAR.describe()
