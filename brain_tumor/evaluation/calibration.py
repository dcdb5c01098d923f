"""How far P(tumor) can be read as a probability: expected calibration error over equal-width bins of P(tumor)
(not of the predicted class's confidence), and temperature scaling fitted on validation.

Temperature scaling is reported, never applied: predict, the thresholds and the ONNX models keep the raw
probabilities. The logits are recovered from the float32 probabilities, clipped to [1e-7, 1 - 1e-7], so a
saturated wrong answer costs at most about 16 nats of NLL.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BINS = 15
EPS = 1e-7
TEMPERATURE_RANGE = (0.05, 20.0)  # searched on a log scale; a bound means validation is separated perfectly


def reliability_table(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Per non-empty bin of P(tumor) ([k/bins, (k+1)/bins), 1.0 in the last): count, mean P(tumor), observed
    tumour frequency."""
    p = np.asarray(p, np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    table = pd.DataFrame({"bin": which, "p": p, "y": np.asarray(y, np.float64)}).groupby("bin")
    return table.agg(count=("p", "size"), mean_predicted=("p", "mean"), observed=("y", "mean")).reset_index()


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> float:
    """Mean over images of |observed frequency - mean P(tumor)| of their bin."""
    t = reliability_table(y, p, bins)
    return float((t["count"] * (t["observed"] - t["mean_predicted"]).abs()).sum() / len(p))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def nll(y: np.ndarray, z: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under sigmoid(z / T), computed stably from the logits."""
    sign = np.where(np.asarray(y) == 1, -1.0, 1.0)
    return float(np.mean(np.logaddexp(0.0, sign * np.asarray(z) / temperature)))


def fit_temperature(y: np.ndarray, z: np.ndarray) -> float:
    """The T minimising the NLL of sigmoid(z / T): T > 1 softens an over-confident model, T < 1 sharpens."""
    from scipy.optimize import minimize_scalar

    low, high = np.log(TEMPERATURE_RANGE)
    fit = minimize_scalar(lambda log_t: nll(y, z, np.exp(log_t)), bounds=(low, high), method="bounded")
    return float(np.exp(fit.x))


def calibration_report(y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray) -> dict:
    """Test ECE and NLL before and after the temperature fitted on validation, and that temperature."""
    from scipy.special import expit

    temperature = fit_temperature(y_val, logit(p_val))
    z = logit(p_test)
    return {
        "ece": expected_calibration_error(y_test, p_test),
        "ece_temperature_scaled": expected_calibration_error(y_test, expit(z / temperature)),
        "nll": nll(y_test, z),
        "nll_temperature_scaled": nll(y_test, z, temperature),
        "temperature": temperature,
    }
