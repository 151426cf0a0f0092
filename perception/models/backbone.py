"""timm backbones as multi-scale feature extractors.

Any timm model that supports ``features_only`` becomes a backbone giving four feature maps C2..C5 at strides
4, 8, 16 and 32. Channels and strides are read from timm's ``feature_info``; nothing downstream types them in.
"""
from __future__ import annotations

import difflib
import os
import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn

STRIDES = (4, 8, 16, 32)


def _closest_timm_names(name: str, n: int = 5) -> list[str]:
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    if not close:  # fall back to a substring match (e.g. "resnet" -> the resnets)
        close = [m for m in names if name.lower() in m][:n]
    return close


def _create_features_model(name: str, pretrained: bool | str, drop_path_rate: float) -> nn.Module:
    if not timm.is_model(name):
        close = _closest_timm_names(name)
        raise ValueError(f"backbone: unknown timm model {name!r}. Closest timm names: "
                         f"{', '.join(close) if close else '(none)'}; see timm.list_models() for all.")
    kwargs = dict(features_only=True, out_indices=(-4, -3, -2, -1))
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    if isinstance(pretrained, str):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"backbone.pretrained: weights file {pretrained!r} does not exist")
        # timm loads the file into the full model (applying its key filters) before wrapping it for features.
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=pretrained), **kwargs)
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # no network, hub down, no weights for this name
            raise RuntimeError(
                f"backbone: could not get pretrained weights for {name!r} from timm's hub ({type(err).__name__}: "
                f"{err}). Offline, download the weights elsewhere and set model.backbone.pretrained to the local "
                "file path (.pth or .safetensors); or set it to false to start from random weights.") from err
    return timm.create_model(name, pretrained=False, **kwargs)


class TimmBackbone(nn.Module):
    """A timm model giving feature maps at strides 4, 8, 16 and 32.

    Args:
        name: timm model name (must support ``features_only``).
        pretrained: False, True (timm hub download) or a local weights file path.
        freeze_at: 0 trains everything; 1 freezes the stem; k > 1 also freezes the first k - 1 stages.
        frozen_bn: turn every BatchNorm into a frozen BatchNorm (fixed statistics and affine).
        drop_path_rate: stochastic depth rate, for models that have it.

    Attributes:
        out_channels: channels of C2..C5 (from ``feature_info``).
        strides: reductions of C2..C5, always ``(4, 8, 16, 32)``.
        pixel_mean, pixel_std: the normalisation the weights expect, on a 0..255 scale (buffers).
    """

    def __init__(self, name: str = "resnet18", pretrained: bool | str = False, freeze_at: int = 0,
                 frozen_bn: bool = False, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.body = _create_features_model(name, pretrained, drop_path_rate)
        info = self.body.feature_info
        self.strides = tuple(info.reduction())
        if self.strides != STRIDES:
            raise ValueError(f"backbone {name!r}: its last four feature levels have strides {self.strides}; the "
                             f"pyramid needs {STRIDES}. Choose a CNN or hierarchical transformer with stride 32.")
        self.out_channels = tuple(info.channels())
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)
        if frozen_bn:
            self.body = freeze_batch_norm_2d(self.body)
        self._frozen_modules: list[nn.Module] = []
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients to the stem (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages.

        The frozen part's BatchNorm statistics stay fixed as well (its modules are kept in eval mode).
        """
        if freeze_at <= 0:
            return
        module_names = [m.replace(".", "_") for m in self.body.feature_info.module_name()]
        params = list(self.body.named_parameters())
        norm = [(n, p, n.replace(".", "_")) for n, p in params]

        def first_index(prefix: str) -> int:
            return next(i for i, (_, _, k) in enumerate(norm) if k.startswith(prefix + "_") or k == prefix)

        if freeze_at == 1:
            stop = first_index(module_names[0])
        else:
            last = module_names[min(freeze_at - 2, len(module_names) - 1)]
            stop = max(i for i, (_, _, k) in enumerate(norm) if k.startswith(last + "_")) + 1
        frozen_names = set()
        for name, param, _ in norm[:stop]:
            param.requires_grad_(False)
            frozen_names.add(name)
        # Modules all of whose parameters are frozen keep BatchNorm statistics fixed too.
        for module in self.body.modules():
            own = list(module.parameters(recurse=False))
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and own and all(not p.requires_grad for p in own):
                self._frozen_modules.append(module)

    def train(self, mode: bool = True) -> "TimmBackbone":
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        """Normalise 0..255 RGB images and return [C2, C3, C4, C5].

        Args:
            images (Tensor[B, 3, H, W]): RGB, float or uint8, values 0..255.
        """
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return self.body(x)


