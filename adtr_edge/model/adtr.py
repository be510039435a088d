"""ADTR in PyTorch, written so that every forward path exports to ONNX and builds in TensorRT.

Rules that keep it exportable: static shapes except the batch, no Python loops over tokens, no
data-dependent control flow, no masks and no -inf constants (they turn into NaN in FP16).

    images (N,H,W,3) uint8 BGR
      -> InGraphPreprocess        cast, [exposure], BGR->RGB, (x/255 - mean)/std } backbone graph
      -> frozen CNN stages -> resize each to one grid -> concat -> standardise }
    features (N,C,h,w)
      -> ReconstructionTransformer  1x1 proj, encoder, decoder with learned queries, 1x1 proj } transformer
      -> AnomalyHead                ||f - f_hat||_2 per location, bilinear up, max of avg-pool } graph
                                    (+ a regional z-score of f - f_hat: the image score only)  }
    anomaly_map (N,1,H,W), score (N,)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..preprocessing import PreprocessSpec, preprocess_spec
from .head import AnomalyHead
from .weights import load_backbone_weights


class InGraphPreprocess(nn.Module):
    """The in-graph half of ``adtr_edge.preprocessing``: uint8 NHWC BGR -> normalised float NCHW RGB."""

    def __init__(self, spec: PreprocessSpec):
        super().__init__()
        a, b = spec.scale_shift()
        self.register_buffer("scale", torch.tensor(a).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(b).view(1, 3, 1, 1), persistent=False)
        # BGR -> RGB as a constant gather: one cheap op that every runtime supports.
        self.register_buffer("rgb_index", torch.tensor([2, 1, 0]), persistent=False)
        self.exposure = float(spec.exposure_reference)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).permute(0, 3, 1, 2)
        if self.exposure > 0:
            # The mean grey level, one axis at a time on [0, 1] pixels: no partial sum exceeds an
            # image side, so an FP16 engine cannot overflow (one mean over 196k pixels of 0-255 would).
            # The halving and doubling between the means keep the simplifier from fusing them into one.
            m = (x * (1.0 / 255.0)).mean(dim=3, keepdim=True)
            m = (m * 0.5).mean(dim=2, keepdim=True)
            m = (m * 2.0).mean(dim=1, keepdim=True)
            x = torch.clamp(x * ((self.exposure / 255.0) / torch.clamp(m, min=1.0 / 255.0)), 0.0, 255.0)
        x = torch.index_select(x, 1, self.rgb_index)
        return x * self.scale + self.shift


def _drop_unused_blocks(cnn: nn.Module) -> None:
    """timm's EfficientNet feature extractor runs every block even when the last requested stage
    ends earlier (a third of Lite0's FLOPs at stages 1-3). ONNX export prunes them anyway; eager
    PyTorch (training, feature caching) would not, so cut them here."""
    names = cnn.feature_info.module_name()
    if hasattr(cnn, "blocks") and names and all(n.startswith("blocks.") for n in names):
        last = max(int(n.split(".")[1]) for n in names)
        cnn.blocks = cnn.blocks[: last + 1]


class Backbone(nn.Module):
    """Frozen multi-scale CNN: stages resized (bilinear) to one grid, concatenated, standardised.

    ``feature_mean``/``feature_std`` are per-channel statistics of the training features (identity
    until ``set_feature_stats``). Standardising equalises the stages' very different scales, which
    is what lets the transformer converge in minutes rather than hundreds of epochs.
    """

    def __init__(self, cfg: ModelConfig, weights: str | None = None, pretrained: bool = True):
        super().__init__()
        import timm

        self.cfg = cfg
        self.preprocess = InGraphPreprocess(preprocess_spec(cfg))
        self.cnn = timm.create_model(cfg.backbone, features_only=True, out_indices=tuple(cfg.stages), pretrained=False)
        _drop_unused_blocks(self.cnn)
        self.weights_source = load_backbone_weights(self.cnn, cfg.backbone, weights) if pretrained else "random"
        self.channels = int(sum(self.cnn.feature_info.channels()))
        self.grid = cfg.grid
        self.register_buffer("feature_mean", torch.zeros(1, self.channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, self.channels, 1, 1))
        for p in self.cnn.parameters():
            p.requires_grad_(False)
        self.cnn.eval()

    def train(self, mode: bool = True):  # the CNN stays in eval mode (frozen BatchNorm statistics)
        super().train(mode)
        self.cnn.eval()
        return self

    def raw_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        outs = []
        for f in self.cnn(x):
            if tuple(f.shape[-2:]) != self.grid:
                f = F.interpolate(f, size=self.grid, mode="bilinear", align_corners=False)
            outs.append(f)
        return torch.cat(outs, dim=1)

    def standardize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.feature_mean) / self.feature_std

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean.reshape(1, -1, 1, 1))
        self.feature_std.copy_(std.reshape(1, -1, 1, 1).clamp_min(1e-6))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.standardize(self.raw_features(images))


# Additive attention bias for masked pairs: finite, so FP16 engines never see -inf (-1e4 still
# underflows exp() to exactly 0 after softmax's max subtraction, and 1e4 fits FP16's range).
MASKED_BIAS = -1.0e4


def neighbour_bias(grid: tuple[int, int], window: int) -> torch.Tensor:
    """(K, K) bias that forbids each token to attend to the ``window`` x ``window`` cells around itself.

    UniAD's neighbour-masked attention: a token must infer its normal feature from context instead of
    copying what it sees, so a defect cannot pass through its own location.
    """
    gh, gw = grid
    rows = torch.arange(gh).repeat_interleave(gw)
    cols = torch.arange(gw).repeat(gh)
    r = window // 2
    near = ((rows[:, None] - rows[None, :]).abs() <= r) & ((cols[:, None] - cols[None, :]).abs() <= r)
    return near.float() * MASKED_BIAS


def sine_position(grid: tuple[int, int], d: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's fixed 2-D sine encoding, (K, d): half the channels encode the row, half the column."""
    gh, gw = grid
    half = d // 2
    freq = temperature ** (2 * (torch.arange(half) // 2) / half)

    def encode(n: int) -> torch.Tensor:
        pos = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 * math.pi
        x = pos[:, None] / freq[None, :]
        return torch.stack([x[:, 0::2].sin(), x[:, 1::2].cos()], dim=2).flatten(1)  # (n, half)

    rows = encode(gh).unsqueeze(1).expand(gh, gw, half)
    cols = encode(gw).unsqueeze(0).expand(gh, gw, half)
    return torch.cat([rows, cols], dim=-1).reshape(gh * gw, d)


def _exporting() -> bool:
    """True while torch.onnx traces the model: the graph then gets plain MatMul/Softmax nodes."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


class Attention(nn.Module):
    """Multi-head attention as plain MatMul/Softmax, so ONNX and TensorRT see the simplest graph."""

    def __init__(self, d_model: int, nhead: int, dropout: float):
        super().__init__()
        self.nhead, self.dh = nhead, d_model // nhead
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (N,K,D) -> (N,h,K,dh)
        return x.reshape(x.shape[0], x.shape[1], self.nhead, self.dh).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        qh, kh, vh = self._split(self.q(q)), self._split(self.k(k)), self._split(self.v(v))
        if _exporting():
            logits = torch.matmul(qh, kh.transpose(-1, -2)) * (1.0 / math.sqrt(self.dh))
            if bias is not None:
                logits = logits + bias
            out = torch.matmul(torch.softmax(logits, dim=-1), vh)
        else:
            # The same attention through PyTorch's fused kernel: the (N, heads, K, K) weights and their
            # dropout mask never materialise, which made training 2-3x slower on a CPU.
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias, dropout_p=self.drop.p if self.training else 0.0)
        out = out.transpose(1, 2)
        return self.out(out.reshape(out.shape[0], out.shape[1], -1))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, dim_ff: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, dim_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """Post-norm layer; the positional embedding is added to queries and keys (DETR style)."""

    def __init__(self, d: int, nhead: int, dim_ff: int, dropout: float):
        super().__init__()
        self.attn = Attention(d, nhead, dropout)
        self.ff = FeedForward(d, dim_ff, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        qk = x + pos
        x = self.norm1(x + self.drop1(self.attn(qk, qk, x, bias)))
        return self.norm2(x + self.drop2(self.ff(x)))


class DecoderLayer(nn.Module):
    """Self-attention over the queries, cross-attention into the encoder memory, FFN; post-norm."""

    def __init__(self, d: int, nhead: int, dim_ff: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d, nhead, dropout)
        self.cross_attn = Attention(d, nhead, dropout)
        self.ff = FeedForward(d, dim_ff, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        qk = x + pos
        x = self.norm1(x + self.drop1(self.self_attn(qk, qk, x, bias)))
        x = self.norm2(x + self.drop2(self.cross_attn(x + pos, memory + pos, memory, bias)))
        return self.norm3(x + self.drop3(self.ff(x)))


class ReconstructionTransformer(nn.Module):
    """Rebuilds standardised features from themselves through attention with learned queries.

    The decoder's input is a learned query per grid location, not the features: a conv or linear
    path could learn the identity and reconstruct anomalies too, while queries fitted to normal
    data, reading the input only through attention, reconstruct anomalies badly (the paper's point).
    """

    def __init__(self, cfg: ModelConfig, channels: int):
        super().__init__()
        d, (gh, gw) = cfg.d_model, cfg.grid
        self.grid = (gh, gw)
        self.input_proj = nn.Linear(channels, d)
        self.output_proj = nn.Linear(d, channels)
        self.pos_embed = cfg.pos_embed
        if cfg.pos_embed == "sine":
            # Fixed positions shared by encoder keys and decoder queries; each query starts at its own
            # location's code (DETR/UniAD practice), so from step 0 the decoder reads by position
            # instead of having to discover a routing from random embeddings.
            sine = sine_position(self.grid, d)
            self.register_buffer("sine_pos", sine.unsqueeze(0), persistent=False)
            self.query = nn.Parameter(sine.clone())
        else:
            self.row_embed = nn.Parameter(torch.rand(gh, d // 2))
            self.col_embed = nn.Parameter(torch.rand(gw, d // 2))
            self.query = nn.Parameter(torch.randn(gh * gw, d) * 0.02)
        if cfg.neighbor_mask:
            self.register_buffer("attn_bias", neighbour_bias(self.grid, cfg.neighbor_mask), persistent=False)
        else:
            self.attn_bias = None
        args = (d, cfg.nhead, cfg.dim_feedforward, cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(*args) for _ in range(cfg.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*args) for _ in range(cfg.num_decoder_layers))

    def position(self) -> torch.Tensor:
        if self.pos_embed == "sine":
            return self.sine_pos
        gh, gw = self.grid
        rows = self.row_embed.unsqueeze(1).expand(gh, gw, -1)
        cols = self.col_embed.unsqueeze(0).expand(gh, gw, -1)
        return torch.cat([rows, cols], dim=-1).reshape(1, gh * gw, -1)

    def forward(self, features: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
        n, c, gh, gw = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # (N, K, C)
        if jitter is not None:  # training only: denoising forces reading the input, not the mean
            tokens = tokens + jitter
        pos = self.position()
        bias = self.attn_bias
        memory = self.input_proj(tokens)
        for layer in self.encoder:
            memory = layer(memory, pos, bias)
        x = self.query.unsqueeze(0).expand(n, -1, -1)
        for layer in self.decoder:
            x = layer(x, memory, pos, bias)
        rec = self.output_proj(x)  # (N, K, C)
        return rec.transpose(1, 2).reshape(n, c, gh, gw)


class TransformerGraph(nn.Module):
    """What the transformer ONNX graph computes: features -> (anomaly_map, score)."""

    def __init__(self, transformer: ReconstructionTransformer, head: AnomalyHead):
        super().__init__()
        self.transformer, self.head = transformer, head

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(features, self.transformer(features))


class ADTR(nn.Module):
    def __init__(self, cfg: ModelConfig, weights: str | None = None, pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg, weights=weights, pretrained=pretrained)
        self.transformer = ReconstructionTransformer(cfg, self.backbone.channels)
        self.head = AnomalyHead(cfg, self.backbone.channels)

    @property
    def spec(self) -> PreprocessSpec:
        return preprocess_spec(self.cfg)

    def transformer_graph(self) -> TransformerGraph:
        return TransformerGraph(self.transformer, self.head)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        return self.head(features, self.transformer(features))


def build_model(cfg: ModelConfig, weights: str | None = None, pretrained: bool = True) -> ADTR:
    return ADTR(cfg, weights=weights, pretrained=pretrained)
