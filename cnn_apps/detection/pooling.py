"""RoI max pooling (Fast R-CNN) and spatial pyramid pooling (SPP-net) as Keras layers.

Shorthand: B batch, H W C feature map, R RoIs per image, P pooled size.

``features`` (B, H, W, C); ``rois`` (B, R, 4) xyxy in *image* pixels, padded rows all -1
(or any RoI with zero area) give zeros. ``spatial_scale`` maps image pixels to feature
cells (1 / stride: 1/16 for VGG16's conv5).

The RoI is snapped to the feature grid as Caffe's ``roi_pooling_layer`` and torchvision's
``roi_pool`` do: ``x1' = round(x1 * scale)``, ``x2' = round(x2 * scale)`` (half away from
zero), the window holds cells ``x1' .. x2'`` *inclusive* (width ``max(x2' - x1' + 1, 1)``).
A window of ``w`` cells is cut into P bins with edges ``floor(i w / P) .. ceil((i + 1) w / P)``
(SPP-net's windows, so neighbouring bins may share a cell), clipped to the map; the bin's
maximum is the output, an empty bin (wholly outside the map) gives 0. The bin edges use
exact integer arithmetic; Caffe and torchvision compute ``i * (w / P)`` in float32, which
agrees for every window up to 56 cells at P = 7 (and always for P = 1, 2, 3, 4, 6) and can
overshoot a ceil by one cell for some larger ones.

How it is computed, in ``keras.ops`` only (TensorFlow and JAX backends): the naive masked max
needs a (B, R, P, P, H, W, C) or, separably, a (B, R, H, P, W, C) intermediate -- 2.6 GB for
128 RoIs on a 38 x 38 x 512 map. Instead each image gets a 2-D *sparse table* (range-maximum
table): level (i, j) holds the maximum over the ``2^i x 2^j`` block starting at each cell
and the cell it came from, (B, Ly, Lx, H, W, C) with ``L = floor(log2 size) + 1``, built
once per batch whatever R. The maximum of any bin is the best of four table entries (four
overlapping power-of-two blocks that cover it exactly), so the RoI cost is a few gathers of
(B, R, P, P, C); the pooled values are then read from the features at the winning cells, so
the gradient reaches exactly those cells (Caffe's argmax backward) and nothing flows back
through the table. For 38 x 38 x 512 the table is 36 maps of values and cells (~210 MB per
image); R = 2000 proposals cost no more table.

Measured on the CPU (2 shared cores, TF 2.21, jit-compiled, 38 x 38 x 512, P = 7): B = 2,
R = 128: ~0.2-0.27 s forward, ~0.35-0.6 s forward + backward; B = 1, R = 2000: ~0.3 s
forward. (A values-only table was 3x faster forward, ~75 ms, but its backward through all
36 table levels took ~1.3 s, so the argmax table is the default.) No TF-only path was added:
``tf.image.crop_and_resize`` is bilinear cropping (RoIAlign-like), not RoI max pooling, and
the portable version is not the bottleneck next to a VGG16 forward pass.

The map's H and W must be known when the layer is built (static shapes: a model with a
fixed image size); the batch size and the number of RoIs may vary.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from cnn_apps.errors import ConfigError


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ConfigError(f"{name} must be a positive int or a (height, width) pair, got {value}")
    return value


def _round_half_away(x):
    """C's ``round`` (Caffe, torchvision): halves go away from zero, unlike ``ops.round``."""
    return ops.sign(x) * ops.floor(ops.abs(x) + 0.5)


def roi_windows(rois, spatial_scale: float):
    """rois (..., 4) xyxy image pixels -> the feature-cell windows (y0, x0, h, w), each (...,)
    int32, and ``valid`` (...,) bool (positive area)."""
    rois = ops.cast(rois, "float32")
    cells = ops.cast(_round_half_away(rois * spatial_scale), "int32")
    x0, y0, x1, y1 = cells[..., 0], cells[..., 1], cells[..., 2], cells[..., 3]
    valid = ops.logical_and(rois[..., 2] > rois[..., 0], rois[..., 3] > rois[..., 1])
    return y0, x0, ops.maximum(y1 - y0 + 1, 1), ops.maximum(x1 - x0 + 1, 1), valid


def bin_edges(start, size, bins: int, limit: int):
    """Bin ``i`` of a window ``start .. start + size`` (cells): ``[start + floor(i size / n),
    start + ceil((i + 1) size / n))`` clipped to ``[0, limit]``. start, size (...,) int32 ->
    lo, hi (..., n) int32."""
    i = ops.arange(bins, dtype="int32")
    size = ops.cast(size, "int32")[..., None]
    start = ops.cast(start, "int32")[..., None]
    lo = start + ops.floor_divide(i * size, bins)
    hi = start - ops.floor_divide(-(i + 1) * size, bins)  # ceil division
    return ops.clip(lo, 0, limit), ops.clip(hi, 0, limit)


def _levels(n: int) -> int:
    return int(n).bit_length()  # floor(log2 n) + 1


def _shifted(x, shift: int, axis: int, fill):
    """``x[k + shift]`` along ``axis``, ``fill`` past the end (0 < shift < size)."""
    ahead = [slice(None)] * len(x.shape)
    ahead[axis] = slice(shift, None)
    head = [slice(None)] * len(x.shape)
    head[axis] = slice(0, shift)
    return ops.concatenate([x[tuple(ahead)], ops.full_like(x[tuple(head)], fill)], axis=axis)


def _merge(values, cells, other_values, other_cells):
    """Keep the larger value of two candidates and the cell it came from (ties: the first)."""
    take = other_values > values
    return ops.where(take, other_values, values), ops.where(take, other_cells, cells)


class RangeMaxTable:
    """The 2-D sparse table of a (B, H, W, C) map. ``argmax`` gives, per channel, the cell
    holding the maximum of any rectangles ``[y_lo, y_hi) x [x_lo, x_hi)`` (four gathers);
    ``gather`` reads the features at those cells. The table itself is built without
    gradient, so the gradient of the pooled values flows through the one final gather to
    the winning cells (Caffe's argmax backward) instead of back through every table level,
    which was ~10x the forward time. Rectangles must not be empty where their result is
    used (callers mask empty bins)."""

    def __init__(self, features):
        shape = features.shape
        if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] is None:
            raise ConfigError(
                f"RoI pooling needs a (B, H, W, C) feature map with known H, W, C, got {shape}: "
                "give the model a fixed input size"
            )
        self.features = features
        self.height, self.width, self.channels = int(shape[1]), int(shape[2]), int(shape[3])
        self.levels_y, self.levels_x = _levels(self.height), _levels(self.width)
        values = ops.stop_gradient(features)
        cells = ops.reshape(
            ops.arange(self.height * self.width, dtype="int32"), (1, self.height, self.width, 1)
        )
        rows = [(values, ops.zeros_like(values, dtype="int32") + cells)]
        for j in range(1, self.levels_y):
            v, c = rows[-1]
            rows.append(_merge(v, c, _shifted(v, 1 << (j - 1), 1, -np.inf), _shifted(c, 1 << (j - 1), 1, 0)))
        table_values, table_cells = [], []
        for row in rows:
            cols = [row]
            for j in range(1, self.levels_x):
                v, c = cols[-1]
                cols.append(
                    _merge(v, c, _shifted(v, 1 << (j - 1), 2, -np.inf), _shifted(c, 1 << (j - 1), 2, 0))
                )
            table_values.append(ops.stack([v for v, _ in cols], axis=1))  # (B, Lx, H, W, C)
            table_cells.append(ops.stack([c for _, c in cols], axis=1))
        # (B, Ly, Lx, H, W, C) flattened to rows of C
        self.values = ops.reshape(ops.stack(table_values, axis=1), (-1, self.channels))
        self.cells = ops.reshape(ops.stack(table_cells, axis=1), (-1, self.channels))
        self.batch = ops.shape(features)[0]
        # floor(log2 n) for n = 0 .. size (entry 0 is never used unmasked)
        self._log_y = ops.convert_to_tensor(
            np.array([max(_levels(n) - 1, 0) for n in range(self.height + 1)], np.int32)
        )
        self._log_x = ops.convert_to_tensor(
            np.array([max(_levels(n) - 1, 0) for n in range(self.width + 1)], np.int32)
        )

    def _split(self, lo, hi, logs, size):
        """The two power-of-two blocks ``[first, first + 2^level)`` and ``[second, ...)`` that
        cover ``[lo, hi)`` exactly."""
        length = ops.clip(hi - lo, 1, size)
        level = ops.take(logs, length)
        first = ops.clip(lo, 0, size - 1)
        second = ops.clip(hi - ops.left_shift(ops.ones_like(level), level), 0, size - 1)
        return level, first, second

    def argmax(self, y_lo, y_hi, x_lo, x_hi):
        """y_lo, y_hi (B|1, R, Py, 1), x_lo, x_hi (B|1, R, 1, Px) int32 -> (B, R, Py, Px, C)
        int32 cells ``y * W + x`` of the maxima."""
        jy, ya, yb = self._split(y_lo, y_hi, self._log_y, self.height)
        jx, xa, xb = self._split(x_lo, x_hi, self._log_x, self.width)
        b = ops.reshape(ops.arange(self.batch, dtype="int32"), (-1, 1, 1, 1))
        base = ((b * self.levels_y + jy) * self.levels_x + jx) * (self.height * self.width)
        best = None
        for y in (ya, yb):
            for x in (xa, xb):
                rows = base + y * self.width + x
                candidate = ops.take(self.values, rows, axis=0), ops.take(self.cells, rows, axis=0)
                best = candidate if best is None else _merge(*best, *candidate)
        return best[1]

    def gather(self, cells):
        """cells (B, ..., C) int32 -> the features there, same shape (differentiable)."""
        plane = self.height * self.width * self.channels
        b = ops.reshape(ops.arange(self.batch, dtype="int32"), (-1,) + (1,) * (len(cells.shape) - 1))
        flat = b * plane + cells * self.channels + ops.arange(self.channels, dtype="int32")
        return ops.take(ops.reshape(self.features, (-1,)), flat, axis=0)


def _pool_windows(table: RangeMaxTable, y0, x0, h, w, pooled: tuple[int, int]):
    """Max-pool windows (B|1, R) in cells into (B, R, Py, Px, C); empty bins -> 0."""
    y_lo, y_hi = bin_edges(y0, h, pooled[0], table.height)  # (B, R, Py)
    x_lo, x_hi = bin_edges(x0, w, pooled[1], table.width)
    y_lo, y_hi = y_lo[..., :, None], y_hi[..., :, None]
    x_lo, x_hi = x_lo[..., None, :], x_hi[..., None, :]
    out = table.gather(table.argmax(y_lo, y_hi, x_lo, x_hi))
    filled = ops.logical_and(y_hi > y_lo, x_hi > x_lo)[..., None]  # (B, R, Py, Px, 1)
    return ops.where(filled, out, ops.zeros_like(out))


def roi_max_pool(features, rois, pool_size=7, spatial_scale: float = 1.0 / 16):
    """Functional RoI max pooling: features (B, H, W, C), rois (B, R, 4) xyxy image pixels
    -> (B, R, Py, Px, C) (see the module docstring)."""
    pooled = _pair(pool_size, "pool_size")
    table = RangeMaxTable(features)
    y0, x0, h, w, valid = roi_windows(rois, spatial_scale)
    out = _pool_windows(table, y0, x0, h, w, pooled)
    return ops.where(valid[..., None, None, None], out, ops.zeros_like(out))


def spatial_pyramid_pool(
    features, rois=None, levels: Sequence[int] = (4, 2, 1), spatial_scale: float = 1.0 / 16
):
    """Functional SPP: rois (B, R, 4) -> (B, R, C * sum(n^2)); rois None -> the whole map,
    (B, C * sum(n^2)). Each level's (n, n, C) grid is flattened row-major (bin y, bin x,
    channel) and the levels are concatenated in the order given."""
    table = RangeMaxTable(features)
    if rois is None:
        zero = ops.zeros((1, 1), "int32")
        y0, x0, h, w, valid = zero, zero, zero + table.height, zero + table.width, None
    else:
        y0, x0, h, w, valid = roi_windows(rois, spatial_scale)
    parts = []
    for n in levels:
        grid = _pool_windows(table, y0, x0, h, w, (int(n), int(n)))  # (B, R, n, n, C)
        shape = ops.shape(grid)
        parts.append(ops.reshape(grid, (shape[0], shape[1], int(n) * int(n) * table.channels)))
    out = ops.concatenate(parts, axis=-1)
    if rois is None:
        return out[:, 0]
    return ops.where(valid[..., None], out, ops.zeros_like(out))


@keras.saving.register_keras_serializable(package="cnn_apps")
class RoIPooling(keras.layers.Layer):
    """Fast R-CNN's RoI max pooling layer: ``layer(features, rois)``.

    features (B, H, W, C), rois (B, R, 4) xyxy image pixels (padded rows -1) ->
    (B, R, Py, Px, C). ``pool_size``: int or (height, width), 7 in Fast R-CNN (VGG16).
    ``spatial_scale``: feature cells per image pixel (1 / stride).
    """

    def __init__(self, pool_size=7, spatial_scale: float = 1.0 / 16, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size, "pool_size")
        self.spatial_scale = float(spatial_scale)
        if self.spatial_scale <= 0:
            raise ConfigError(f"spatial_scale must be positive (1 / stride), got {spatial_scale}")

    def call(self, features, rois):
        return roi_max_pool(features, rois, self.pool_size, self.spatial_scale)

    def compute_output_shape(self, features_shape, rois_shape):
        return (features_shape[0], rois_shape[1], *self.pool_size, features_shape[-1])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "spatial_scale": self.spatial_scale}


@keras.saving.register_keras_serializable(package="cnn_apps")
class SpatialPyramidPooling(keras.layers.Layer):
    """SPP-net's spatial pyramid pooling layer: ``layer(features, rois)`` or ``layer(features)``.

    With rois (B, R, 4) xyxy image pixels (padded rows -1): each RoI's window is max-pooled
    into n x n bins for every n in ``levels`` -> (B, R, C * sum(n^2)). Without rois the
    whole map is pooled (SPP-net's classifier) -> (B, C * sum(n^2)). Layout: levels in
    the order given, each flattened (bin y, bin x, channel).
    """

    def __init__(self, levels: Sequence[int] = (4, 2, 1), spatial_scale: float = 1.0 / 16, **kwargs):
        super().__init__(**kwargs)
        self.levels = tuple(int(n) for n in levels)
        if not self.levels or min(self.levels) < 1:
            raise ConfigError(f"levels must be positive bin counts such as (4, 2, 1), got {levels}")
        self.spatial_scale = float(spatial_scale)
        if self.spatial_scale <= 0:
            raise ConfigError(f"spatial_scale must be positive (1 / stride), got {spatial_scale}")

    @property
    def bins(self) -> int:
        return sum(n * n for n in self.levels)

    def call(self, features, rois=None):
        return spatial_pyramid_pool(features, rois, self.levels, self.spatial_scale)

    def compute_output_shape(self, features_shape, rois_shape=None):
        length = None if features_shape[-1] is None else features_shape[-1] * self.bins
        if rois_shape is None:
            return (features_shape[0], length)
        return (features_shape[0], rois_shape[1], length)

    def get_config(self):
        return {**super().get_config(), "levels": self.levels, "spatial_scale": self.spatial_scale}
