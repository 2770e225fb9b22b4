"""SPP-net for detection (He et al. 2014): the conv feature map is computed **once per image**,
every proposal is projected onto it and max-pooled by a spatial pyramid (levels 4, 2, 1) into
a fixed-length vector, which goes to the same class-specific SVMs and box regressors as
R-CNN's (:class:`~cnn_apps.detection.region_head.RegionHead`). R-CNN runs the network once per
proposal; SPP-net once per image, which is where its test-time speed-up comes from.

Shorthand: N images, S image side, P proposals, h w C conv map, L = sum(n^2) pyramid bins,
D = C L.

The backbone is the one :func:`~cnn_apps.detection.region_training.finetune_classifier` fine-tunes on
warped proposals (as for R-CNN), or a fine-tuned classifier passed to ``fit(classifier=...)``
(share one between R-CNN and SPP-net). Its conv weights are copied into a copy of the
backbone built for the full image size, cut at ``feature_level``: a pyramid level (``C3``:
stride 8, a 12 x 12 map at 96 px; the last stage's 6 x 6 map is too coarse for 8-20 px
shapes), ``last``, or a layer's name (VGG-16's ``block5_conv3``: the paper's conv5, stride 16).

What the paper does differently: it keeps the ImageNet-trained conv layers fixed and
fine-tunes only the fully connected layers *after* the SPP layer (fc6, fc7 and a new
fc8 on SPP features of proposals, 25 % foreground batches), then trains the SVMs on fc7
features; it also pools at several image scales. Here the SVMs read the SPP vector of the
conv map directly (no FC layers after the pyramid), the conv layers are those fine-tuned on
warped crops, and there is one scale.
"""

from __future__ import annotations

import numpy as np

from cnn_apps import registry
from cnn_apps.detection.region_detector import RegionDetector
from cnn_apps.errors import ConfigError


@registry.register("region_detector", "sppnet")
class SPPNet(RegionDetector):
    """SPP-net detector: ``spp_levels`` pyramid over the ``feature_level`` map of the
    fine-tuned backbone (see the module docstring); other arguments as
    :class:`~cnn_apps.detection.rcnn.RCNN`'s."""

    kind = "sppnet"

    def __init__(
        self, num_classes: int, class_names=None, *, spp_levels=(4, 2, 1), feature_level: str = "C3", **kwargs
    ):
        super().__init__(num_classes, class_names, **kwargs)
        self.spp_levels = tuple(int(n) for n in spp_levels)
        if not self.spp_levels or min(self.spp_levels) < 1:
            raise ConfigError(f"spp_levels must be positive bin counts such as [4, 2, 1], got {spp_levels}")
        self.feature_level = str(feature_level)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "spp_levels": list(self.spp_levels),
            "feature_level": self.feature_level,
        }

    def _after_finetune(self) -> None:
        """The conv map model for whole images: scaling -> a full-size copy of the fine-tuned
        backbone, cut at ``feature_level``; and the SPP of boxes on such maps."""
        import keras

        from cnn_apps.detection.pooling import SpatialPyramidPooling

        c = self.classifier
        backbone = c.backbone
        config = {**backbone.get_config(), "input_shape": (self.image_size, self.image_size, 3)}
        config.pop("name", None)
        config.pop("trainable", None)
        full = type(backbone)(**config)
        full.set_weights(backbone.get_weights())
        pyramid = getattr(full, "pyramid_outputs", {})
        if self.feature_level in pyramid:  # a P-key or an old name (C3, pool4): its stride either way
            stride = pyramid.stride(self.feature_level)
            full = keras.Model(full.inputs, full.get_layer(pyramid[self.feature_level]).output)
        elif self.feature_level == "last":
            stride = 2 ** int(round(np.log2(self.image_size / full.output.shape[1])))
        elif self.feature_level in {layer.name for layer in full.layers}:
            # a layer's name: VGG's block5_conv3 is the conv5 map SPP-net and Fast R-CNN pool
            # (stride 16), which no pyramid level (the pools) is
            output = full.get_layer(self.feature_level).output
            stride = 2 ** int(round(np.log2(self.image_size / output.shape[1])))
            full = keras.Model(full.inputs, output)
        else:
            raise ConfigError(
                f"feature_level {self.feature_level!r} is not an output of backbone {self.backbone}: "
                f"choose one of {pyramid.names() if hasattr(pyramid, 'names') else sorted(pyramid)}, "
                "'last' or a layer name"
            )
        images = keras.Input((self.image_size, self.image_size, 3), name="images")
        self._conv_model = keras.Model(images, full(c.get_layer("pixel_scaling")(images)), name="sppnet_conv")
        self.spatial_scale = 1.0 / stride
        # SPP as a compiled model too: run eagerly, its many small ops cost more than the warps
        # of R-CNN (measured: 125 ms against 8 ms per image of ~100 boxes at 112 px)
        maps = keras.Input(self._conv_model.output.shape[1:], name="maps")
        rois = keras.Input((None, 4), name="rois")
        self._pool_model = keras.Model(
            [maps, rois],
            SpatialPyramidPooling(self.spp_levels, self.spatial_scale)(maps, rois),
            name="sppnet_pool",
        )

    def conv_maps(self, images) -> np.ndarray:
        """images (N, S, S, 3) -> conv maps (N, h, w, C), one forward pass per image."""
        images = np.asarray(images, np.float32)
        return np.concatenate(
            [
                np.asarray(self._conv_model.predict_on_batch(images[i : i + 32]))
                for i in range(0, len(images), 32)
            ]
        )

    def pool(self, maps, boxes_list) -> list[np.ndarray]:
        """Project every image's boxes onto its map (``spatial_scale``) and pyramid-pool them:
        maps (N, h, w, C), boxes N x (P_i, 4) image pixels -> N x (P_i, C L)."""
        from cnn_apps.detection.proposals import pad_proposals

        counts = [len(np.asarray(b).reshape(-1, 4)) for b in boxes_list]
        out = []
        for i in range(0, len(maps), 16):
            chunk = boxes_list[i : i + 16]
            width = -(-max(max(counts[i : i + 16]), 1) // 64) * 64  # a few padded sizes: few traces
            padded, _ = pad_proposals(chunk, width)
            pooled = np.asarray(self._pool_model.predict_on_batch([maps[i : i + 16], padded]))
            out.extend(pooled[j, : counts[i + j]].astype(np.float32) for j in range(len(chunk)))
        return out

    def _box_features(self, images, boxes_list) -> list[np.ndarray]:
        return self.pool(self.conv_maps(images), list(boxes_list))
