"""Receptor levels from the units running, in the energy domain (the optimizer's own acoustics,
for the loop's calibration and the simulated meters). Point sources over reflecting ground with
the profile's attenuation per group; the background adds energetically."""

from __future__ import annotations

import math

import numpy as np

from hashflex.profile import Receptor, SiteProfile


def level_dba(energy: float | np.ndarray) -> float | np.ndarray:
    """Sound level from sound energy: L = 10·log10(E), dB(A).

    The one conversion between the energy domain (where sources and background add) and levels.

    Parameters
    ----------
    energy : float or numpy.ndarray
        Dimensionless, 10^(L/10); scalar or any shape.

    Returns
    -------
    float or numpy.ndarray
        dB(A), same shape; ``-inf`` where E <= 0 (silence).
    """
    if np.ndim(energy) == 0:
        return 10.0 * math.log10(energy) if energy > 0 else -math.inf
    energy = np.asarray(energy, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(energy > 0, 10.0 * np.log10(np.maximum(energy, 1e-300)), -np.inf)


def energy(level_dba: float | np.ndarray) -> float | np.ndarray:
    """Sound energy from a level: E = 10^(L/10).

    Parameters
    ----------
    level_dba : float or numpy.ndarray
        dB(A); scalar or any shape (``-inf`` gives 0).

    Returns
    -------
    float or numpy.ndarray
        Dimensionless, same shape.
    """
    if np.ndim(level_dba) == 0:
        return 10.0 ** (level_dba / 10.0)
    return np.power(10.0, np.asarray(level_dba, dtype=float) / 10.0)


def laeq_dba(levels_dba, durations_s=None) -> float:
    """Energy-average level (LAeq): 10·log10(Σ t_i·10^(L_i/10) / Σ t_i) (equal weights without durations).

    The one energy average of the project (audit payloads, reports, the noise meters' summaries).

    Parameters
    ----------
    levels_dba : iterable of float
        A-weighted levels L_i in dB(A), n values.
    durations_s : iterable of float, optional
        Weights t_i (seconds, or any one unit), n values; equal weights when omitted.

    Returns
    -------
    float
        LAeq in dB(A); NaN without readings or with zero total weight.
    """
    levels = np.asarray([float(x) for x in levels_dba], dtype=float)
    weights = np.ones(len(levels)) if durations_s is None else np.asarray([float(t) for t in durations_s], dtype=float)
    if len(weights) != len(levels):
        raise ValueError(f"durations_s: {len(weights)} values for {len(levels)} levels")
    if len(levels) == 0 or weights.sum() <= 0:
        return math.nan
    return float(level_dba(float(np.sum(weights * energy(levels))) / float(weights.sum())))


def modelled_laeq_dba(profile: SiteProfile, running: dict[tuple[str, str], int], receptor_id: str,
                      include_background: bool = True) -> float:
    """Modelled A-weighted level at a receptor from the units running.

    L = 10·log10(Σ n·10^((Lw − A)/10) [+ 10^(bg/10)]), summed in the energy domain; A (dB) is the
    receptor's attenuation from each group (:meth:`hashflex.profile.Receptor.attenuation_from`:
    given, or a point source over reflecting ground, 20·log10(r / 1 m) + 8 dB, plus the profile's
    extra attenuation).

    Parameters
    ----------
    profile : SiteProfile
    running : dict[tuple[str, str], int]
        Units running per (group id, mode name); ``sleep`` and counts <= 0 add nothing.
    receptor_id : str
    include_background : bool, default True
        Add the receptor's background level energetically.

    Returns
    -------
    float
        dB(A); ``-inf`` for a silent site without background.

    Raises
    ------
    StopIteration
        ``receptor_id`` is not a receptor of the profile.
    """
    receptor = next(r for r in profile.receptors if r.id == receptor_id)
    energy = 10.0 ** (receptor.background_dba / 10.0) if include_background else 0.0
    for (group_id, mode_name), count in running.items():
        if count <= 0 or mode_name == "sleep":
            continue
        attenuation = receptor.attenuation_from(group_id)
        if math.isinf(attenuation):
            continue
        mode = profile.group(group_id).mode(mode_name)
        energy += count * 10.0 ** ((mode.sound_power_dba - attenuation) / 10.0)
    return 10.0 * math.log10(energy) if energy > 0 else -math.inf


def compared_level_dba(measured_dba: float | np.ndarray, background_dba: float, cap_applies_to: str) -> float | np.ndarray:
    """The measured quantity a cap is compared with.

    The meter's total reading, or for a site-contribution cap (``cap_applies_to == "site"``) the
    reading with the background removed energetically, 10·log10(10^(L/10) − 10^(bg/10)).

    Parameters
    ----------
    measured_dba : float or numpy.ndarray
        Meter reading(s), LAeq dB(A).
    background_dba : float
        The receptor's background level, dB(A).
    cap_applies_to : str
        ``"total"`` or ``"site"``.

    Returns
    -------
    float or numpy.ndarray
        Same shape as ``measured_dba``; ``-inf`` at or below the background (site caps).
    """
    if cap_applies_to != "site":
        return measured_dba
    with np.errstate(divide="ignore", invalid="ignore"):
        energy = np.power(10.0, np.asarray(measured_dba, dtype=float) / 10.0) - 10.0 ** (background_dba / 10.0)
        level = np.where(energy > 0, 10.0 * np.log10(np.maximum(energy, 1e-300)), -np.inf)
    return float(level) if level.ndim == 0 else level


def noise_margin_db(receptor: Receptor, offset_db: float | None = None,
                    residuals_db: np.ndarray | list[float] | None = None) -> tuple[float, str]:
    """The margin (dB) a plan keeps below a receptor's cap, and how it was chosen.

    The one rule the loop, the forecast and the guard use:

    - fixed: ``max(model_margin_db, offset_db)``: the profile's margin, tightened (never loosened)
      by the calibration offset (how far meters read above the model);
    - compliance (``receptor.compliance_probability`` = p, with at least
      ``compliance_min_samples`` residuals): the p-quantile of measured − modelled residuals (dB),
      floored at 0 — the cap is then met in a share p of intervals if the residuals keep their
      distribution. This may be below the fixed margin (a meter that agrees with the model earns
      back the fixed margin's cost) or above it (a model that reads low).

    Parameters
    ----------
    receptor : Receptor
    offset_db : float, optional
        Calibration offset, measured − modelled (dB).
    residuals_db : numpy.ndarray or list[float], optional
        Measured − modelled per reading (dB); non-finite values are ignored.

    Returns
    -------
    margin_db : float
    basis : str
        ``"fixed"``, ``"calibrated"`` or ``"compliance p=0.99 (n=412)"``.
    """
    p = receptor.compliance_probability
    residuals = np.asarray([] if residuals_db is None else residuals_db, dtype=float)
    residuals = residuals[np.isfinite(residuals)]
    if p is not None and residuals.size >= receptor.compliance_min_samples:
        return max(float(np.quantile(residuals, p)), 0.0), f"compliance p={p:g} (n={residuals.size})"
    if offset_db is not None and offset_db > receptor.model_margin_db:
        return float(offset_db), "calibrated"
    return float(receptor.model_margin_db), "fixed"
