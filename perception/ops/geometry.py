"""The geometry of inference: fit an image into the network input, and map predictions back.

The contract shared with evaluation: resize keeping the aspect ratio so that the image fits inside the network
size ``(H, W)`` (scale = min(H / h, W / w), no crop), then pad bottom/right with zeros to a multiple of 32.
Predictions map back by dropping the padding and resizing to the original ``(h, w)``:

- boxes are scaled by ``w / rw`` and ``h / rh`` (``rw x rh`` being the resized image) and clipped;
- dense maps (segmentation logits, depth) are resized from the head's stride-4 grid straight to the original
  pixels with one bilinear interpolation whose coordinate map is exact (original pixel centre -> network pixel
  centre -> stride-4 cell), so there is no intermediate full-size network map and no half-pixel drift; cells
  that cover only padding are left out (the last image cell is repeated), so no padding bleeds into the borders.

- class ids (segmentation) are the arg-max of those resized logits, computed without them
  (``argmax_to_original``): the arg-max on the head's grid, gathered to the original pixels by the same map, and
  the K logits blended only at the pixels whose four neighbouring cells disagree; or, cheaper, the arg-max on
  the head's grid resized to the original pixels by nearest neighbour (``ids_to_original``, numpy for both
  backends: each pixel takes the cell its centre falls in, by the same coordinate map).

``dense_to_original`` (PyTorch) and ``dense_to_original_numpy`` (the numpy reference for ONNX callers) compute
the same thing, as do ``argmax_to_original`` and ``argmax_to_original_numpy``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SIZE_DIVISOR = 32


@dataclass(frozen=True)
class Letterbox:
    """Where one image of size ``(height, width)`` lies in the network input.

    Attributes:
        height, width: the original image size.
        resized_height, resized_width: the size it was resized to (its top-left corner is at (0, 0)).
        padded_height, padded_width: the network input size after padding to a multiple of 32.
    """

    height: int
    width: int
    resized_height: int
    resized_width: int
    padded_height: int
    padded_width: int

    @property
    def resized_size(self) -> tuple[int, int]:
        return self.resized_height, self.resized_width

    @property
    def padded_size(self) -> tuple[int, int]:
        return self.padded_height, self.padded_width

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Network pixels per original pixel along x and y (the two differ by rounding only)."""
        return self.resized_width / self.width, self.resized_height / self.height


def round_up(value: int, divisor: int = SIZE_DIVISOR) -> int:
    return -(-value // divisor) * divisor


def fit_letterbox(height: int, width: int, network_size: tuple[int, int],
                  size_divisor: int = SIZE_DIVISOR) -> Letterbox:
    """The letterbox of an ``(height, width)`` image inside ``network_size`` ``(H, W)``.

    Args:
        height, width: original image size (> 0).
        network_size: (H, W) the image must fit in; the aspect ratio is kept.
        size_divisor: the padded size is a multiple of it.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size: got {height}x{width}, expected a non-empty image")
    net_h, net_w = network_size
    if net_h <= 0 or net_w <= 0:
        raise ValueError(f"network image_size: got {tuple(network_size)}, expected two positive ints (H, W)")
    scale = min(net_h / height, net_w / width)
    # Round, but never beyond the network size (floating error) and never to an empty image.
    resized_h = min(net_h, max(1, int(round(height * scale))))
    resized_w = min(net_w, max(1, int(round(width * scale))))
    return Letterbox(height, width, resized_h, resized_w, round_up(resized_h, size_divisor),
                     round_up(resized_w, size_divisor))


def resize_image(image: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """``image`` (ndarray[h, w, 3] uint8) resized to the letterbox's resized size (bilinear, as in training)."""
    if image.shape[:2] == letterbox.resized_size:
        return image
    return cv2.resize(image, (letterbox.resized_width, letterbox.resized_height), interpolation=cv2.INTER_LINEAR)


def letterbox_image(image: np.ndarray, network_size: tuple[int, int],
                    size_divisor: int = SIZE_DIVISOR) -> tuple[np.ndarray, Letterbox]:
    """Resize and zero-pad one image into the network input (numpy reference of the predictor's preprocessing).

    Args:
        image (ndarray[h, w, 3]): uint8 RGB.
        network_size: (H, W) to fit in.

    Returns:
        ndarray[Hp, Wp, 3] uint8 and the :class:`Letterbox`.
    """
    box = fit_letterbox(image.shape[0], image.shape[1], network_size, size_divisor)
    padded = np.zeros((box.padded_height, box.padded_width, 3), np.uint8)
    padded[:box.resized_height, :box.resized_width] = resize_image(image, box)
    return padded, box


def boxes_to_original(boxes: Tensor | np.ndarray, letterbox: Letterbox) -> Tensor | np.ndarray:
    """Boxes (Tensor or ndarray [N, 4], xyxy in network pixels) in original-image pixels, clipped to the image."""
    sx, sy = letterbox.width / letterbox.resized_width, letterbox.height / letterbox.resized_height
    if isinstance(boxes, Tensor):
        scale = boxes.new_tensor([sx, sy, sx, sy])
        out = boxes * scale
        out[:, 0::2] = out[:, 0::2].clamp(0, letterbox.width)
        out[:, 1::2] = out[:, 1::2].clamp(0, letterbox.height)
        return out
    out = np.asarray(boxes, np.float32) * np.array([sx, sy, sx, sy], np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, letterbox.width)
    out[:, 1::2] = out[:, 1::2].clip(0, letterbox.height)
    return out


def _dense_scales(letterbox: Letterbox, grid_size: tuple[int, int]) -> tuple[float, float]:
    """Output-pixels per grid cell along y and x for a map on a grid covering the padded input."""
    stride_y = letterbox.padded_height / grid_size[0]
    stride_x = letterbox.padded_width / grid_size[1]
    return (stride_y * letterbox.height / letterbox.resized_height,
            stride_x * letterbox.width / letterbox.resized_width)


def _valid_cells(letterbox: Letterbox, grid_size: tuple[int, int]) -> tuple[int, int]:
    """Grid cells that hold any image pixel: the rest see only padding, so sampling stops at the last valid
    cell (edge replication) instead of blending zeros of the padding into the image's last rows and columns."""
    stride_y = letterbox.padded_height / grid_size[0]
    stride_x = letterbox.padded_width / grid_size[1]
    return (min(grid_size[0], math.ceil(letterbox.resized_height / stride_y - 1e-6)),
            min(grid_size[1], math.ceil(letterbox.resized_width / stride_x - 1e-6)))


def dense_to_original(x: Tensor, letterbox: Letterbox) -> Tensor:
    """Resize a dense map that covers the padded network input to the original image, dropping the padding.

    Args:
        x (Tensor[B, C, h, w]): a map on a regular grid over the padded input (e.g. stride-4 logits).
        letterbox: the image's letterbox.

    Returns:
        Tensor[B, C, height, width], bilinear (align_corners=False) with the exact coordinate map.
    """
    scale_y, scale_x = _dense_scales(letterbox, tuple(x.shape[-2:]))
    rows, cols = _valid_cells(letterbox, tuple(x.shape[-2:]))
    x = x[..., :rows, :cols]  # cropping the end keeps the coordinate map; interpolate clamps at the new edge
    # recompute_scale_factor=False makes interpolate map output pixel centres through exactly these scales; the
    # tiny margin keeps floor(h * scale) from falling one pixel short of the original size through rounding.
    scales = [scale_y * (1 + 1e-7), scale_x * (1 + 1e-7)]
    # An axis whose output size equals its input size is copied by interpolate whatever its scale (a drift of up
    # to a pixel across the map when the scale is just above 1): such an axis is resampled by explicit taps.
    copied = [math.floor(n * s) == n and s != 1.0 for n, s in zip((rows, cols), scales)]
    out = F.interpolate(x, scale_factor=[1.0 if c else s for c, s in zip(copied, scales)], mode="bilinear",
                        align_corners=False, recompute_scale_factor=False)
    out = out[..., :letterbox.height, :letterbox.width]
    for dim, size, scale, is_copied in ((-2, letterbox.height, scales[0], copied[0]),
                                        (-1, letterbox.width, scales[1], copied[1])):
        if is_copied:
            out = _resample_axis(out, dim, size, scale)
    return out


def _resample_axis(x: Tensor, dim: int, size: int, scale: float) -> Tensor:
    """1-D bilinear resampling of ``x`` along ``dim`` to ``size`` (the taps of :func:`_linear_taps`)."""
    i0, i1, w1 = (torch.from_numpy(a).to(x.device) for a in _linear_taps(size, x.shape[dim], scale))
    shape = [1] * x.ndim
    shape[dim] = size
    w1 = w1.to(x.dtype).reshape(shape)
    return x.index_select(dim, i0) * (1 - w1) + x.index_select(dim, i1) * w1


def _linear_taps(out_size: int, in_size: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D bilinear resampling (PyTorch's align_corners=False convention)."""
    src = (np.arange(out_size, dtype=np.float64) + 0.5) / scale - 0.5
    src = np.clip(src, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def dense_to_original_numpy(x: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """Numpy twin of :func:`dense_to_original` for one image (OpenCV's resize for up to 4 channels): depth's resize
    in both predictor backends, every dense map's in the ONNX one.

    Args:
        x (ndarray[C, h, w]): a map on a regular grid over the padded input.

    Returns:
        ndarray[C, height, width] float32.
    """
    scale_y, scale_x = _dense_scales(letterbox, x.shape[-2:])
    rows, cols = _valid_cells(letterbox, x.shape[-2:])
    x = x[:, :rows, :cols]
    # OpenCV's bilinear resize has the same convention (pixel centres, edge clamped) and float weights; given the
    # scales (no output size) it maps through exactly them, covering at least the original size. Like
    # F.interpolate it copies when the output size equals the input's (whatever the scales): those go the numpy way.
    copied = (round(rows * scale_y), round(cols * scale_x)) == (rows, cols) and (scale_y, scale_x) != (1.0, 1.0)
    if x.shape[0] <= 4 and not copied:
        out = cv2.resize(np.ascontiguousarray(x.transpose(1, 2, 0), dtype=np.float32), None, fx=scale_x,
                         fy=scale_y, interpolation=cv2.INTER_LINEAR)
        out = out.reshape(*out.shape[:2], -1)
        if out.shape[0] >= letterbox.height and out.shape[1] >= letterbox.width:
            return np.ascontiguousarray(out[:letterbox.height, :letterbox.width].transpose(2, 0, 1))
    y0, y1, wy = _linear_taps(letterbox.height, x.shape[-2], scale_y)
    x0, x1, wx = _linear_taps(letterbox.width, x.shape[-1], scale_x)
    x = x.astype(np.float32, copy=False)
    rows = x[:, y0] * (1 - wy)[None, :, None] + x[:, y1] * wy[None, :, None]       # [C, height, w]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx                          # [C, height, width]


def _argmax_taps(letterbox: Letterbox, grid_size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Bilinear taps (rows y0, y1, wy; columns x0, x1, wx) of every original pixel into the valid cells of a
    map on ``grid_size`` (the whole grid over the padded input)."""
    scale_y, scale_x = _dense_scales(letterbox, grid_size)
    rows, cols = _valid_cells(letterbox, grid_size)
    return (*_linear_taps(letterbox.height, rows, scale_y), *_linear_taps(letterbox.width, cols, scale_x))


def argmax_to_original(logits: Tensor, letterbox: Letterbox, max_gather_share: float = 1 / 3) -> Tensor:
    """The arg-max of :func:`dense_to_original`'s resized logits, without resizing K float channels.

    A bilinear sample is a convex blend of its four neighbouring cells, so where those four cells share their
    arg-max the sample has it too: every such pixel takes the class id of the head's grid (one int channel
    gathered). Only the pixels whose four cells disagree (the class boundaries, a few percent of a picture) are
    blended, K logits each. The result equals the arg-max of the full-size resize except on exact ties.
    When more than ``max_gather_share`` of the pixels need blending (a noisy map, such as an untrained head's),
    gathering K logits per pixel costs more than blending every pixel separably, so the blend is done that way,
    with the same arithmetic (hence the same ids).

    Args:
        logits (Tensor[K, h, w]): one image's scores on a regular grid over the padded input.
        letterbox: the image's letterbox.
        max_gather_share: the share of blended pixels above which every pixel is blended.

    Returns:
        Tensor[height, width] int64 class ids.
    """
    grid = tuple(logits.shape[-2:])
    rows, cols = _valid_cells(letterbox, grid)
    logits = logits[:, :rows, :cols].float()
    y0, y1, wy, x0, x1, wx = (torch.from_numpy(t).to(logits.device) for t in _argmax_taps(letterbox, grid))
    # The grid's arg-max, with -1 on every cell whose quad (itself and its right, lower and lower-right
    # neighbours; the last row and column repeat, as the clamped taps do) does not share one arg-max.
    ids = logits.max(0).indices                                                   # [rows, cols]
    down = torch.cat([ids[1:], ids[-1:]], 0)
    right = torch.cat([ids[:, 1:], ids[:, -1:]], 1)
    diag = torch.cat([down[:, 1:], down[:, -1:]], 1)
    ids = ids.masked_fill((ids != down) | (ids != right) | (ids != diag), -1)
    # One gather of one int channel to the original pixels (each pixel's quad is the one at its top-left tap).
    source = (y0[:, None] * cols + x0[None, :]).view(-1)                          # [height * width]
    out = ids.view(-1).index_select(0, source)
    flat = (out < 0).nonzero().squeeze(1)
    if flat.numel() > max_gather_share * out.numel():
        # Columns, then rows: the order of the gathered blend below, so that both give the same values.
        across = logits.index_select(2, x0) * (1 - wx) + logits.index_select(2, x1) * wx         # [K, rows, W]
        return (across.index_select(1, y0) * (1 - wy[:, None]) + across.index_select(1, y1) * wy[:, None]
                ).max(0).indices
    if flat.numel():
        # Channels last (a copy of the small grid only), so that each gathered pixel reads K contiguous logits.
        cells = logits.permute(1, 2, 0).reshape(rows * cols, -1)                  # [rows * cols, K]
        py, px = flat // letterbox.width, flat % letterbox.width
        gy0, gy1, gx0, gx1 = y0[py] * cols, y1[py] * cols, x0[px], x1[px]
        wy1, wx1 = wy[py, None], wx[px, None]
        top = cells.index_select(0, gy0 + gx0) * (1 - wx1) + cells.index_select(0, gy0 + gx1) * wx1   # [N, K]
        bottom = cells.index_select(0, gy1 + gx0) * (1 - wx1) + cells.index_select(0, gy1 + gx1) * wx1
        out[flat] = (top * (1 - wy1) + bottom * wy1).max(1).indices
    return out.view(letterbox.height, letterbox.width)


def argmax_to_original_numpy(logits: np.ndarray, letterbox: Letterbox, max_gather_share: float = 1 / 3
                             ) -> np.ndarray:
    """Numpy twin of :func:`argmax_to_original`: ndarray[K, h, w] -> ndarray[height, width] int64."""
    grid = tuple(logits.shape[-2:])
    rows, cols = _valid_cells(letterbox, grid)
    logits = logits[:, :rows, :cols].astype(np.float32, copy=False)
    y0, y1, wy, x0, x1, wx = _argmax_taps(letterbox, grid)
    ids = logits.argmax(0)
    down = np.concatenate([ids[1:], ids[-1:]], 0)
    right = np.concatenate([ids[:, 1:], ids[:, -1:]], 1)
    diag = np.concatenate([down[:, 1:], down[:, -1:]], 1)
    mixed = (ids != down) | (ids != right) | (ids != diag)
    out = ids[y0][:, x0]
    py, px = np.nonzero(mixed[y0][:, x0])
    if py.size > max_gather_share * out.size:
        across = logits[:, :, x0] * (1 - wx) + logits[:, :, x1] * wx                              # [K, rows, W]
        return (across[:, y0] * (1 - wy)[:, None] + across[:, y1] * wy[:, None]).argmax(0)
    if py.size:
        gy0, gy1, gx0, gx1 = y0[py], y1[py], x0[px], x1[px]
        wy1, wx1 = wy[py], wx[px]
        top = logits[:, gy0, gx0] * (1 - wx1) + logits[:, gy0, gx1] * wx1
        bottom = logits[:, gy1, gx0] * (1 - wx1) + logits[:, gy1, gx1] * wx1
        out[py, px] = (top * (1 - wy1) + bottom * wy1).argmax(0)
    return out


def _nearest_taps(letterbox: Letterbox, grid_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the valid cell that holds each original pixel's centre (the coordinate map of
    :func:`dense_to_original`, rounded down instead of blended; PyTorch's ``nearest-exact``)."""
    scales = _dense_scales(letterbox, grid_size)
    cells = _valid_cells(letterbox, grid_size)
    return tuple(np.minimum(np.floor((np.arange(size, dtype=np.float64) + 0.5) / scale).astype(np.int64), n - 1)
                 for size, scale, n in zip((letterbox.height, letterbox.width), scales, cells))


def ids_to_original(ids: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """Class ids on the head's grid -> the original pixels by nearest neighbour: two index gathers, no float map.

    In numpy for either backend: the grid is small to fetch from a GPU, the full-size map is what the caller gets.

    Args:
        ids (ndarray[h, w]): one image's ids (any integer dtype; e.g. the arg-max of its logits) on a regular grid
            over the padded input.
        letterbox: the image's letterbox.

    Returns:
        ndarray[height, width] of ``ids``' dtype.
    """
    rows, cols = _nearest_taps(letterbox, tuple(ids.shape[-2:]))
    return np.take(np.take(ids, rows, axis=0), cols, axis=1)


# ---------------------------------------------------------------------------------------- evaluation geometry
# The evaluation transform fits an image into ``data.image_size`` (its ``input_size``) and collate pads it; these
# map one image's tensors at the network input back to its ``orig_size``.


def crop_resize_nearest(pred: Tensor, input_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
    """Ids or any map at the network input -> the original image: drop the padding, nearest resize.

    Args:
        pred (Tensor[H_pad, W_pad] or Tensor[H_pad, W_pad, C]): one image of the padded batch.
        input_size: (h, w) of the image inside the padding (``meta["input_size"]``).
        orig_size: (H, W) of the original image (``meta["orig_size"]``).
    """
    h, w = input_size
    crop = pred[:h, :w]
    channels_last = crop.ndim == 3
    x = crop.permute(2, 0, 1)[None] if channels_last else crop[None, None]
    out = F.interpolate(x.float(), size=tuple(orig_size), mode="nearest-exact")[0]
    out = out.permute(1, 2, 0) if channels_last else out[0]
    return out.to(pred.dtype)


def crop_resize_linear(pred: Tensor, input_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
    """A smooth map (depth in metres, normals) at the network input -> the original image, bilinear.

    Args:
        pred (Tensor[H_pad, W_pad] or Tensor[H_pad, W_pad, C]): one image of the padded batch.
        input_size: (h, w) inside the padding.
        orig_size: (H, W) of the original image.
    """
    h, w = input_size
    crop = pred[:h, :w].float()
    channels_last = crop.ndim == 3
    x = crop.permute(2, 0, 1)[None] if channels_last else crop[None, None]
    out = F.interpolate(x, size=tuple(orig_size), mode="bilinear", align_corners=False)[0]
    return out.permute(1, 2, 0) if channels_last else out[0]


def scale_boxes(boxes: Tensor, input_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
    """xyxy boxes at the network input -> original pixels (per-axis scale, clipped to the image).

    Args:
        boxes (Tensor[N, 4]): xyxy at the network input.
        input_size: (h, w) inside the padding.
        orig_size: (H, W) of the original image.
    """
    h, w = input_size
    height, width = orig_size
    scale = boxes.new_tensor([width / w, height / h, width / w, height / h])
    out = boxes * scale
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out
