"""Settings of the synthetic head CT generator (SyntheticConfig) and its fixed vocabulary."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

#: Hemorrhage types, in the order the CTFSH labels list them (e.g. "IPH;IVH;SDH;EDH;SAH").
HEMORRHAGE_TYPES: tuple[str, ...] = ("IPH", "IVH", "SDH", "EDH", "SAH")

#: Part of every UID hash: a change of the generated data must come with a new version.
_GENERATOR_VERSION = "ichbench-synthetic-2"

@dataclass
class SyntheticConfig:
    seed: int = 0
    n_normal: int = 12
    n_pathological: int = 18
    image_size: int = 256          # Rows = Columns, >= 128; must work for 256 and 512
    n_slices: tuple[int, int] = (20, 28)   # min, max slices per series, drawn per patient
    slice_thickness_mm: float = 5.0
    noise_hu: float = 6.0          # std of scanner noise
    id_format: str = "SYN-CT-{n}"  # PatientID; the labels files use "CT_{n}" as the CTFSH name
    extra_series: bool = False     # also write a bone-kernel series + a lateral localizer per patient
    fov_mm: tuple[float, float] = (220.0, 250.0)  # range of the reconstruction field of view
    correlated_noise: bool = True  # mix white noise with a 3x3-smoothed copy (CT-like texture)
    psf_blur: bool = True          # slight in-plane blur (scanner PSF) before the noise
    tilt_prob: float = 0.15        # fraction of patients scanned with a gantry tilt
    max_tilt_deg: float = 8.0      # tilt drawn uniformly in [2, max_tilt_deg] degrees
    reverse_instance_prob: float = 0.3   # InstanceNumber runs vertex -> base for these patients
    fov_padding_prob: float = 0.5  # int16 patients padded outside the reconstruction circle
    calcification_prob: float = 0.5      # prob. of pineal / choroid plexus calcification (both classes)
    reader_miss_prob: float = 0.1  # per reader and true subtype: probability it is not marked
    reader_fp_prob: float = 0.15   # per normal patient: probability one reader calls an ICH
    study_date: str = "20000101"   # fixed fake StudyDate
    number_range_factor: int = 4   # patient numbers drawn without replacement from [0, max(100, f*N))
    lesion_scale: float = 1.0      # in-plane size factor of every hemorrhage (thickness, length, radius)
    lesion_slices: tuple[int, int] = (2, 10)  # min, max slices a hemorrhage spans (clipped to the series)
    # Head trauma, the commonest cause of ICH in CQ500-like cohorts: a subgaleal (scalp) hematoma over
    # the bleed, and for some a linear calvarial fracture under it. Extracranial findings: never in the
    # ICH ground truth. Normal patients can be trauma cases too (a scalp hematoma, no bleed).
    trauma_prob: float = 0.6         # pathological patients with a scalp hematoma
    fracture_prob: float = 0.5       # of those, with a calvarial fracture (an EDH always has one)
    normal_trauma_prob: float = 0.2  # normal patients with a scalp hematoma

    def __post_init__(self) -> None:
        # (min, max) pairs arrive as lists from JSON / YAML
        for name in ("n_slices", "fov_mm", "lesion_slices"):
            setattr(self, name, tuple(getattr(self, name)))

    def validate(self) -> None:
        if self.image_size < 128:
            raise ValueError("image_size must be >= 128")
        lo, hi = self.n_slices
        if not (4 <= lo <= hi):
            raise ValueError("n_slices must be (min, max) with 4 <= min <= max")
        if self.n_normal < 0 or self.n_pathological < 0 or self.n_normal + self.n_pathological < 1:
            raise ValueError("need at least one patient")
        for name in ("trauma_prob", "fracture_prob", "normal_trauma_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.lesion_scale <= 0:
            raise ValueError("lesion_scale must be > 0")
        if not (1 <= self.lesion_slices[0] <= self.lesion_slices[1]):
            raise ValueError("lesion_slices must be (min, max) with 1 <= min <= max")
        if self.slice_thickness_mm <= 0 or self.noise_hu < 0:
            raise ValueError("slice_thickness_mm must be > 0 and noise_hu >= 0")
        if "{n}" not in self.id_format:
            raise ValueError("id_format must contain '{n}'")


def _cfg_digest(cfg: SyntheticConfig) -> str:
    d = asdict(cfg)
    d["_version"] = _GENERATOR_VERSION
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
