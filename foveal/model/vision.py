"""The compact model's convolutional vision tower, a drop-in for Qwen2.5-VL's vision transformer.

It takes what Qwen2.5-VL's vision tower takes (flattened 14 px patches in the processor's
order, `(num_patches, 3 * 2 * 14 * 14)`, and `grid_thw` per image), rebuilds each image, runs a
small CNN at the stride of one merged cell (28 px for merge 2, 56 px for merge 4; one feature per
cell, in the order the decoder places image tokens), appends Fourier features of each cell's
normalized position, and projects to the decoder's width with a two-layer merger. Why a CNN: a
ViT trained from scratch on two cores learned nothing in 17 minutes; a CNN of a million
parameters localised small defects (DESIGN.md). `backbone()` (before the merger) is what
stage-0 pre-training supervises; with `cell_classes` its cell head lives here too and its
output (each cell's class log-probabilities, and the view's type probabilities, peak defect
probability and the peak's position) enters the merger with the features.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from foveal.model.config import FovealVisionConfig
from foveal.operations import LOOK_SIDE


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], patch: int, merge: int,
               temporal: int) -> torch.Tensor:
    """One image's rows of `patches` (gt*gh*gw, C*T*P*P) back to pixels (C, gh*P, gw*P); the
    row order is the Qwen2-VL processor's: (t, h/merge, w/merge, merge, merge), each row (C, T, P, P)."""
    gt, gh, gw = grid
    x = patches.view(gt, gh // merge, gw // merge, merge, merge, -1, temporal, patch, patch)
    x = x[0, :, :, :, :, :, 0]  # (bh, bw, mh, mw, C, P, P): still images repeat the temporal patch
    x = x.permute(4, 0, 2, 5, 1, 3, 6)  # (C, bh, mh, P, bw, mw, P)
    return x.reshape(x.shape[0], gh * patch, gw * patch)


def position_features(rows: int, cols: int, bands: int, device: torch.device) -> torch.Tensor:
    """(rows*cols, 2 + 4*bands): each cell centre's normalized (x, y) and sin/cos of 2^k*pi*x, y."""
    ys = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) / rows
    xs = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) / cols
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)  # (N, 2)
    freqs = math.pi * (2.0 ** torch.arange(bands, device=device, dtype=torch.float32))
    angles = coords[:, :, None] * freqs  # (N, 2, bands)
    return torch.cat([coords, angles.sin().flatten(1), angles.cos().flatten(1)], dim=-1)


def _fourier_at(x: torch.Tensor, y: torch.Tensor, bands: int) -> torch.Tensor:
    """(2 + 4*bands,) the features of `position_features` at one normalized point (x, y)."""
    coords = torch.stack([x, y])  # (2,)
    freqs = math.pi * (2.0 ** torch.arange(bands, device=x.device, dtype=torch.float32))
    angles = coords[:, None] * freqs  # (2, bands)
    return torch.cat([coords, angles.sin().flatten(), angles.cos().flatten()])


def look_hundredths(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """(rows*cols, 4) the numbers of each cell's `operations.look_box`, in hundredths, in token
    order; tensor arithmetic (not a loop over cells) so the ONNX export keeps rows and cols dynamic."""
    side = round(LOOK_SIDE * 100)
    def starts(n: int) -> torch.Tensor:
        centre = (torch.arange(n, device=device, dtype=torch.float64) + 0.5) / n
        steps = torch.floor((centre - LOOK_SIDE / 2) / 0.02 + 1e-6)
        return (2 * steps).clamp(0, 100 - side).to(torch.long)
    xs, ys = starts(cols), starts(rows)
    x1 = xs[None, :].expand(rows, cols).reshape(-1)
    y1 = ys[:, None].expand(rows, cols).reshape(-1)
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=-1)


class _Block(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.gelu(self.norm1(self.conv1(x)))
        return nn.functional.gelu(x + self.norm2(self.conv2(y)))


def _stage(c_in: int, c_out: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    padding = kernel // 2 if kernel > stride else 0  # keeps H/stride exact for multiples of 28
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
                         nn.GroupNorm(min(groups, c_out), c_out), nn.GELU())


class CellHead(nn.Module):
    """Stage 0's classifiers on the backbone's maps: per cell (1x1 conv) and per view (on the
    maps' mean and max; one defect per frame, so the view's type is its cells' maximum)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, classes, 1)
        self.view = nn.Linear(2 * channels, classes)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.conv(maps)  # type: ignore[no-any-return]  # (B, classes, rows, cols)

    @staticmethod
    def pooled(maps: torch.Tensor) -> torch.Tensor:
        """What the view classifier reads: the maps' mean and max per channel, (B, 2C)."""
        return torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], dim=1)

    def whole(self, maps: torch.Tensor) -> torch.Tensor:
        return self.view(self.pooled(maps))  # type: ignore[no-any-return]  # (B, classes)


PEAK_SHARPNESS = 20.0  # softmax temperature over cells' defect probability for the peak position
TYPE_GAIN = 0.5  # the type (and coordinate) embedding's initial share of a token's norm
COORD_STEPS = 101  # the numbers a box is written with: 0.0, 0.01, ..., 1.0
# images of one size run through a backbone in batches of at most this many pixels: past that the
# activations leave the cache and a batch costs more per image than one image alone. Measured on
# this 2-core machine (`bench/backbone_batch.py`): 16 probes of 336 px 179 ms in one batch, 81 ms
# in batches of 4; 8 views of 448 px 157 ms in one batch, 71 ms in batches of 2
BATCH_PIXELS = 4 * 336 * 336
# the backbones' weights and their input batches laid out channels-last: oneDNN's convolutions and
# the group norms run 15-25 % faster that way on this CPU (`bench/backbone_batch.py`;
# the maps differ from the default layout's by ~1e-5)
CHANNELS_LAST = True


def fast_low_precision(device: torch.device | str = "cpu") -> torch.dtype | None:
    """bfloat16 where `device` runs it natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU that
    supports it), else None. On this 2-core machine's CPU the backbone runs 2.1x faster under
    bfloat16 autocast (`docs/benchmarks.md`, "One inspection", session 29); on a CPU without native
    bfloat16 oneDNN emulates it and it would be slower, so there it stays float32."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if kind != "cpu":
        return None
    native = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.bfloat16 if any(check is not None and check() for check in native) else None


class ConvVisionTower(nn.Module):
    """Backbone (3 strided stages: x2, x2, x7 = 28 px, residual blocks, for merge 4 one more x2
    stage and block) + optional cell head + merger."""

    def __init__(self, config: FovealVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.spatial_merge_size = config.spatial_merge_size
        self.patch_size = int(config.patch_size)  # type: ignore[arg-type]
        self.temporal_patch_size = int(config.temporal_patch_size)  # type: ignore[arg-type]
        if self.spatial_merge_size not in (2, 4):
            raise ValueError(f"spatial_merge_size {self.spatial_merge_size} must be 2 or 4")
        self.cell_px = self.patch_size * self.spatial_merge_size
        c1, c2, c3 = config.conv_channels
        groups = config.norm_groups
        self.stem = nn.Sequential(_stage(config.in_channels, c1, 3, 2, groups), _stage(c1, c2, 3, 2, groups),
                                  _stage(c2, c3, 7, 7, groups))
        self.blocks = nn.Sequential(*[_Block(c3, min(groups, c3)) for _ in range(config.blocks)])
        self.down: nn.Module = nn.Identity() if self.spatial_merge_size == 2 else \
            nn.Sequential(_stage(c3, c3, 2, 2, groups), _Block(c3, min(groups, c3)))
        classes = int(getattr(config, "cell_classes", 0) or 0)
        self.head: CellHead | None = CellHead(c3, classes) if classes else None
        self.position_dim = 2 + 4 * config.fourier_bands
        extra = 2 * classes + 1 + self.position_dim if classes else 0  # cell + view summary
        # Qwen2.5-VL's merger normalizes its input (`ln_q`); without it raw features (|x| up to
        # ~20), positions and the cell head's probabilities enter at unequal scales and the
        # merger's output grew to norm ~245 against the text embeddings' ~1.8 (v3, measured)
        self.merger_in: nn.Module = nn.LayerNorm(c3 + self.position_dim + extra) \
            if getattr(config, "merger_norm", False) else nn.Identity()
        self.merger = nn.Sequential(nn.Linear(c3 + self.position_dim + extra, config.out_hidden_size),
                                    nn.GELU(), nn.Linear(config.out_hidden_size, config.out_hidden_size))
        self.feature_dim = c3
        typed = bool(classes and getattr(config, "type_embedding", False))
        self.type_embed: nn.Parameter | None = nn.Parameter(torch.zeros(classes, config.out_hidden_size)) \
            if typed else None
        self.type_gain: nn.Parameter | None = nn.Parameter(torch.tensor(TYPE_GAIN)) if typed else None
        placed = bool(getattr(config, "coord_embedding", False))
        self.coord_embed: nn.Parameter | None = \
            nn.Parameter(torch.zeros(COORD_STEPS, config.out_hidden_size)) if placed else None
        self.coord_gain: nn.Parameter | None = nn.Parameter(torch.tensor(TYPE_GAIN)) if placed else None
        self.reader: nn.Linear | None = nn.Linear(2 * c3, classes) \
            if classes and getattr(config, "type_reader", False) else None
        self.reader_backbone: nn.Sequential | None = None
        # the dtype the backbone runs the pointer's probes in (`feature_maps(..., probe=True)`
        # without gradients, under autocast; the maps come back in the tower's dtype): the looks
        # it ranks and whose peaks it reads, never an image the decoder sees. None: the tower's
        # own. Set by `loader.load(tower_precision=...)`, never saved with the weights
        self.probe_dtype: torch.dtype | None = None
        if self.reader is not None and getattr(config, "reader_backbone", False):
            self.reader_backbone = self._backbone_copy()
        self.lay_out()

    def lay_out(self, channels_last: bool | None = None) -> None:
        """The backbones' weights in the memory layout `feature_maps` runs them in (default
        `CHANNELS_LAST`). A loader that replaces the parameters calls it again after loading."""
        layout = torch.channels_last if (CHANNELS_LAST if channels_last is None else channels_last) \
            else torch.contiguous_format
        for module in (self.stem, self.blocks, self.down, self.reader_backbone):
            if module is not None:
                module.to(memory_format=layout)  # type: ignore[call-overload]

    def enable_reader(self) -> nn.Linear:
        """The type reader (`FovealVisionConfig.type_reader`), added as a copy of the view head's
        classifier when the tower has none: the reads stay what they were until it is refitted."""
        if self.head is None:
            raise ValueError("a type reader needs the tower's cell head (cell_classes > 0)")
        if self.reader is None:
            self.config.type_reader = True
            self.reader = nn.Linear(self.head.view.in_features, self.head.view.out_features)
            self.reader.load_state_dict(self.head.view.state_dict())
            self.reader.to(self.head.view.weight.device, self.head.view.weight.dtype)
        return self.reader

    def _backbone_copy(self) -> nn.Sequential:
        return nn.Sequential(*(copy.deepcopy(m) for m in (self.stem, self.blocks, self.down)))

    def enable_reader_backbone(self) -> nn.Sequential:
        """A backbone of the type reader's own (`FovealVisionConfig.reader_backbone`), added as a
        copy of the tower's when it has none, with the reader itself: reads stay what they were
        until it is fine-tuned (`foveal.training.readout`)."""
        self.enable_reader()
        if self.reader_backbone is None:
            self.config.reader_backbone = True
            self.reader_backbone = self._backbone_copy()
        return self.reader_backbone

    def reader_maps(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """The maps a type is read from, per image (C, H, W): the reader's own backbone's when it
        has one, else the tower's (`feature_maps`)."""
        if self.reader_backbone is None:
            return self.feature_maps(images)
        return self.feature_maps(images, self.reader_backbone)

    def type_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, classes) logits of the type a grounded answer reads from `CellHead.pooled` maps:
        the reader's when the tower has one, else the view head's."""
        assert self.head is not None
        classifier = self.reader if self.reader is not None else self.head.view
        return classifier(pooled)  # type: ignore[no-any-return]

    def enable_type_embedding(self, rows: torch.Tensor) -> None:
        """Add the type embedding to a tower without one (an older checkpoint), seeded with
        `rows` (classes, out_hidden_size): the text embeddings of the class names."""
        if self.head is None:
            raise ValueError("a type embedding needs the tower's cell head (cell_classes > 0)")
        self.config.type_embedding = True
        unit = rows.detach().clone().to(self.dtype)
        self.type_embed = nn.Parameter(unit / unit.norm(dim=-1, keepdim=True).clamp(min=1e-6))
        self.type_gain = nn.Parameter(torch.tensor(TYPE_GAIN, dtype=self.dtype))

    def enable_coord_embedding(self, rows: torch.Tensor) -> None:
        """Add the coordinate embedding to a tower without one, seeded with `rows` (101,
        out_hidden_size): the text embeddings of the numbers 0.0, 0.01, ..., 1.0."""
        self.config.coord_embedding = True
        unit = rows.detach().clone().to(self.dtype)
        self.coord_embed = nn.Parameter(unit / unit.norm(dim=-1, keepdim=True).clamp(min=1e-6))
        self.coord_gain = nn.Parameter(torch.tensor(TYPE_GAIN, dtype=self.dtype))

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized pixels -> (B, C3, H/cell, W/cell) maps."""
        return self.down(self.blocks(self.stem(x)))  # type: ignore[no-any-return]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """What stage 0 trains and SFT keeps frozen: the convolutions and the cell head (and the
        type reader, which only `foveal train readout` and `foveal train rl --train reader` fit)."""
        modules: list[nn.Module] = [self.stem, self.blocks, self.down]
        if self.head is not None:
            modules.append(self.head)
        if self.reader is not None:
            modules.append(self.reader)
        if self.reader_backbone is not None:
            modules.append(self.reader_backbone)
        return [p for m in modules for p in m.parameters()]

    @property
    def dtype(self) -> torch.dtype:
        first = self.merger[0]
        assert isinstance(first, nn.Linear)
        return first.weight.dtype

    def images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """The (C, H, W) images of a batch of flattened patches."""
        sizes = (grid_thw.prod(-1)).tolist()
        grids = [tuple(int(v) for v in g) for g in grid_thw.tolist()]
        return [unpatchify(rows, g, self.patch_size, self.spatial_merge_size, self.temporal_patch_size)  # type: ignore[arg-type]
                for rows, g in zip(torch.split(pixel_values, sizes), grids, strict=True)]

    def feature_maps(self, images: list[torch.Tensor], backbone: nn.Module | None = None,
                     probe: bool = False) -> list[torch.Tensor]:
        """Backbone maps (C3, H/cell, W/cell) per image (of `backbone`, default the tower's);
        images of one size run as batches of at most `BATCH_PIXELS` pixels (at least one image).
        `probe`: images only the pointer reads, run in `probe_dtype` when inferring."""
        run = self.backbone if backbone is None else backbone
        low = self.probe_dtype if probe and not (self.training or torch.is_grad_enabled()) else None
        out: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault((image.shape[1], image.shape[2]), []).append(i)
        for (height, width), indices in by_size.items():
            step = max(1, BATCH_PIXELS // (height * width))
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                batch = torch.stack([images[i] for i in chunk]).to(self.dtype)  # (B, 3, H, W)
                if CHANNELS_LAST:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                if low is None:
                    maps = run(batch)  # (B, C3, H/cell, W/cell)
                else:
                    with torch.autocast(batch.device.type, dtype=low):
                        maps = run(batch).to(self.dtype)
                for i, fmap in zip(chunk, maps, strict=True):
                    out[i] = fmap
        return [m for m in out if m is not None]

    def tokens(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Merged tokens (sum of rows*cols, out_hidden_size) from backbone maps, in decoder order."""
        rows_out = []
        for fmap in maps:
            channels, rows, cols = fmap.shape
            flat = fmap.reshape(channels, rows * cols).T  # (N, C3)
            pos = position_features(rows, cols, self.config.fourier_bands, fmap.device).to(flat.dtype)
            parts = [flat, pos]
            if self.head is not None:
                parts += self.summary(fmap, pos)
            merged = self.merger(self.merger_in(torch.cat(parts, dim=-1)))
            if self.type_embed is not None and self.type_gain is not None:
                # the cell's and the view's class probabilities, averaged, in the class names'
                # word directions, at a share of each token's own norm (image tokens come out of
                # the merger ~150x the norm of a word's embedding: measured on v6)
                view = parts[3][0, : self.type_embed.shape[0]]
                probs = 0.5 * (parts[2].exp() + view[None])  # (N, K)
                scale = merged.detach().norm(dim=-1, keepdim=True)
                merged = merged + self.type_gain * scale * (probs.to(merged.dtype) @ self.type_embed)
            if self.coord_embed is not None and self.coord_gain is not None:
                numbers = self.coord_embed[look_hundredths(rows, cols, merged.device)].sum(1)  # (N, D)
                scale = merged.detach().norm(dim=-1, keepdim=True)
                merged = merged + self.coord_gain * scale * numbers.to(merged.dtype) / 2.0
            rows_out.append(merged)
        return torch.cat(rows_out)

    def summary(self, fmap: torch.Tensor, pos: torch.Tensor) -> list[torch.Tensor]:
        """The cell head's reading of one map (C3, rows, cols), per token: the cell's class
        log-probabilities (N, K) and the view's summary (N, K + 1 + position_dim), the same
        for every token: type probabilities, peak defect probability, the peak's position."""
        assert self.head is not None
        n = fmap.shape[1] * fmap.shape[2]
        cell = self.head(fmap[None])[0].flatten(1).T.log_softmax(-1).clamp(min=-10.0)  # (N, K)
        defect = 1.0 - cell[:, 0].exp()  # (N,)
        view = self.head.whole(fmap[None])[0].softmax(-1)  # (K,)
        weights = torch.softmax(defect * PEAK_SHARPNESS, dim=0)  # (N,)
        x, y = (weights[:, None] * pos[:, :2]).sum(0)
        peak = _fourier_at(x, y, self.config.fourier_bands)
        summary = torch.cat([view, defect.max()[None], peak]).to(pos.dtype)
        return [cell, summary[None].expand(n, -1)]

    def forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor,
                **_: object) -> BaseModelOutputWithPooling:
        maps = self.feature_maps(self.images(hidden_states, grid_thw))
        return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=self.tokens(maps))
