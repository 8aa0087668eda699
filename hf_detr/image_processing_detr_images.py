"""Images for HfDetrImageProcessor: inputs of every kind opened (files lazily, with their EXIF
orientation), then each decoded, resized, rescaled and normalized in a worker thread (PIL and torch
release the GIL) and written once into the preallocated padded batch with its `pixel_mask`.

8-bit content is resized with PIL (bilinear, exactly as transformers' PIL backend); float tensors and
GPU batches with torchvision. Part of the self-contained "model files": imports no other module of the
package.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import PIL.Image
import torch
from torchvision.transforms.v2 import functional as TF
from transformers.image_utils import PILImageResampling, load_image

SIXTEEN_BIT_PIL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
EXIF_ORIENTATION = 0x0112  # the EXIF tag: 1 = as stored, 2-8 = mirrored and/or rotated on display
# how each EXIF orientation turns the stored pixels into the displayed ones (PIL.ImageOps.exif_transpose's)
_ORIENTATION_TRANSPOSE = {
    2: PIL.Image.Transpose.FLIP_LEFT_RIGHT,
    3: PIL.Image.Transpose.ROTATE_180,
    4: PIL.Image.Transpose.FLIP_TOP_BOTTOM,
    5: PIL.Image.Transpose.TRANSPOSE,
    6: PIL.Image.Transpose.ROTATE_270,
    7: PIL.Image.Transpose.TRANSVERSE,
    8: PIL.Image.Transpose.ROTATE_90,
}
_TORCH_INTERPOLATION = {
    PILImageResampling.NEAREST: TF.InterpolationMode.NEAREST,
    PILImageResampling.BILINEAR: TF.InterpolationMode.BILINEAR,
    PILImageResampling.BICUBIC: TF.InterpolationMode.BICUBIC,
}


@dataclass
class SourceImage:
    """One input image before resizing: a PIL image (8-bit content) or a CHW tensor, and its size."""

    pil: PIL.Image.Image | None
    tensor: torch.Tensor | None
    height: int
    width: int
    channels: int  # as stored (a PIL image: its bands), before any conversion to RGB
    orientation: int = 1  # a file's EXIF orientation, applied when it is decoded (`exif_orientation`)
    path: str | None = None  # the file it is decoded from (in a worker thread), for error messages


def make_pixels(
    sources: list[SourceImage],
    output_sizes: list[tuple[int, int]],
    settings: dict[str, Any],
    device: torch.device,
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | None]:
    """pixel_values [B, C, H, W] (a list of [C, H, W] for unpadded images of different sizes) and,
    padded, pixel_mask [B, H, W]: each image decoded, resized and normalized into its place."""
    channels = _output_channels(sources, settings)
    scale, shift = _affine(settings, channels)
    batch_height, batch_width = _padded_size(output_sizes, settings)
    pixel_mask = None
    if settings["do_pad"]:
        # boolean (1 byte): an int64 mask of a large batch costs as much to write as the pixels
        pixel_mask = torch.empty(len(sources), batch_height, batch_width, dtype=torch.bool, device=device)
    if settings["do_pad"] or len(set(output_sizes)) == 1:  # one [B, C, H, W] tensor
        # uninitialised: each worker writes its image and zeroes its own padding (in parallel)
        pixel_values = torch.empty(len(sources), channels, batch_height, batch_width, device=device)
        targets = [pixel_values[i, :, :h, :w] for i, (h, w) in enumerate(output_sizes)]
    else:  # unpadded images of different sizes: a list of [C, H, W]
        pixel_values = targets = [torch.empty(channels, h, w, device=device) for h, w in output_sizes]

    inference = torch.is_inference_mode_enabled()  # thread-local: the workers enter it as the caller is

    def work(index: int) -> None:
        with torch.inference_mode(inference):
            _decode_file(sources[index], index)
            _resize_into(sources[index], targets[index], settings, scale, shift)
            if pixel_mask is not None:
                height, width = output_sizes[index]
                _fill_padding(pixel_values[index], height, width, 0)
                _fill_padding(pixel_mask[index], height, width, False)
                pixel_mask[index, :height, :width] = True

    workers = min(len(sources), settings["num_threads"] or _default_workers(output_sizes))
    if workers <= 1:
        for index in range(len(sources)):
            work(index)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, range(len(sources))))
    _check_finite_pixels(sources, targets)
    return pixel_values, pixel_mask


# Output pixels a worker thread must have to pay for itself: below it, starting threads costs more than
# they save (4 frames of 128 px: 7.2 ms with 2 threads, 1.2 ms in one; measured on 2 cores).
PIXELS_PER_WORKER = 300_000


def _default_workers(output_sizes: list[tuple[int, int]]) -> int:
    """One thread per PIXELS_PER_WORKER output pixels, at most the CPU count (and 8)."""
    pixels = sum(height * width for height, width in output_sizes)
    return max(1, min(os.cpu_count() or 1, 8, pixels // PIXELS_PER_WORKER))


def load_source(
    image: Any, index: int, input_data_format: str | None, input_channel_order: str = "rgb"
) -> SourceImage:
    """Open or wrap one input without decoding pixels where that can wait (file paths); arrays and
    tensors in `input_channel_order` ("bgr": OpenCV's) are brought to RGB."""
    if input_channel_order not in ("rgb", "bgr"):
        raise ValueError(
            f"`input_channel_order` must be 'rgb' or 'bgr' (OpenCV's), got {input_channel_order!r}."
        )
    path, orientation = None, 1
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        path = os.fspath(image)
        try:
            image = PIL.Image.open(path)  # lazy: only the header is read here
            orientation = exif_orientation(image)
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"images[{index}]: cannot read {path!r} as an image ({error}).") from error
    elif isinstance(image, (str, os.PathLike)):
        name = os.fspath(image)
        try:
            image = load_image(name)  # URLs and base64, EXIF rotation applied
        except Exception as error:
            raise ValueError(f"images[{index}]: cannot load {name!r} as an image ({error}).") from error
    if isinstance(image, PIL.Image.Image):
        _check_size(index, image.height, image.width)
        width, height = displayed_size(image.width, image.height, orientation)
        return SourceImage(image, None, height, width, len(image.getbands()), orientation, path)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise ValueError(
            f"images[{index}] is a {type(image).__name__}; expected a PIL image, numpy array, torch tensor, "
            "file path or URL."
        )
    return _wrap_tensor(image, index, input_data_format, input_channel_order == "bgr")


def _wrap_tensor(image: torch.Tensor, index: int, input_data_format: str | None, bgr: bool) -> SourceImage:
    if image.ndim == 2:  # [H, W]: no channel dimension, whatever input_data_format says
        image = image[None]
    elif image.ndim != 3:
        raise ValueError(
            f"images[{index}] has shape {list(image.shape)}; expected [H, W], [C, H, W] or [H, W, C] "
            "(a 4-D input is a batch: pass it as a list or a 4-D array)."
        )
    elif _channels_last(image.shape, input_data_format, index):
        image = image.permute(2, 0, 1)
    channels, height, width = image.shape
    _check_size(index, height, width)
    if bgr and channels in (3, 4):  # BGR(A) -> RGB(A)
        image = torch.cat([image[:3].flip(0), image[3:]])
    if image.dtype == torch.uint16:  # 16-bit content (0..65535) to 8-bit range, so 1/255 still holds
        image = (image.to(torch.float32) / 257.0).round_().clamp_(0, 255).to(torch.uint8)
    if image.dtype == torch.uint8 and not image.is_cuda and channels in (1, 3, 4):
        # 8-bit content takes the PIL path: the same resize as transformers' PIL backend
        pil = PIL.Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy())  # [H, W] or [H, W, C]
        return SourceImage(pil, None, height, width, channels)
    if not (image.is_floating_point() or image.dtype == torch.uint8):
        raise ValueError(f"images[{index}] has dtype {image.dtype}; expected uint8, uint16 or float.")
    return SourceImage(None, image, height, width, channels)


def _output_channels(sources: list[SourceImage], settings: Mapping[str, Any]) -> int:
    counts = {3 if settings["do_convert_rgb"] else s.channels for s in sources}
    if len(counts) > 1:
        raise ValueError(
            f"The images have different channel counts {sorted(counts)}; use do_convert_rgb=True or "
            "pass images of one kind."
        )
    channels = counts.pop()
    for name in ("image_mean", "image_std"):
        if settings["do_normalize"] and len(settings[name]) not in (1, channels):
            raise ValueError(
                f"`{name}` has {len(settings[name])} values but the images have {channels} channels."
            )
    return channels


def _affine(settings: Mapping[str, Any], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) so that out = pixel * scale + shift does rescale and normalize."""
    scale = np.full(channels, settings["rescale_factor"] if settings["do_rescale"] else 1.0)
    shift = np.zeros(channels)
    if settings["do_normalize"]:  # image_mean and image_std: one value, or one per channel (broadcast)
        scale, shift = scale / settings["image_std"], -settings["image_mean"] / settings["image_std"]
    largest = 255.0 * np.abs(scale) + np.abs(shift)  # of an 8-bit image; float images are checked after
    if not (np.isfinite(largest).all() and largest.max() < np.finfo(np.float32).max):
        raise ValueError(
            f"`rescale_factor` ({settings['rescale_factor']!r}), `image_mean` and `image_std` "
            f"({settings['image_std'].tolist()}) scale pixels beyond the float32 range."
        )
    return scale, shift


def _padded_size(sizes: list[tuple[int, int]], settings: Mapping[str, Any]) -> tuple[int, int]:
    height, width = map(max, zip(*sizes))  # the largest of each side
    if settings["pad_size"] is None or not settings["do_pad"]:
        return height, width
    pad_height, pad_width = settings["pad_size"]["height"], settings["pad_size"]["width"]
    if height > pad_height or width > pad_width:
        raise ValueError(
            f"`pad_size` {pad_height}x{pad_width} is smaller than a resized image ({height}x{width})."
        )
    return pad_height, pad_width


def _resize_into(
    source: SourceImage,
    target: torch.Tensor,
    settings: Mapping[str, Any],
    scale: np.ndarray,
    shift: np.ndarray,
) -> None:
    """Resize one image and write `pixel * scale + shift` into `target` [C, h, w] (a view of the batch)."""
    height, width = target.shape[-2:]
    resample = PILImageResampling(settings["resample"])
    floating_input = source.tensor is not None and source.tensor.is_floating_point()
    if source.pil is not None:  # decoded (with a file's EXIF orientation) to RGB or its native 8-bit mode
        image = _eight_bit(_oriented(source.pil, source.orientation), settings["do_convert_rgb"])
        if target.device.type == "cpu" and (image.height, image.width) != (height, width):
            image = image.resize((width, height), resample=resample)  # a GPU batch resizes there
        pixels = torch.from_numpy(np.asarray(image).copy())  # [h, w] or [h, w, C] uint8
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    else:
        pixels = _tensor_to_rgb(source.tensor) if settings["do_convert_rgb"] else source.tensor
    pixels = pixels.to(target.device, non_blocking=True)
    if tuple(pixels.shape[-2:]) != (height, width):
        interpolation = _TORCH_INTERPOLATION.get(resample, TF.InterpolationMode.BILINEAR)
        floating = pixels if pixels.is_floating_point() else pixels.float()
        pixels = TF.resize(floating, [height, width], interpolation=interpolation, antialias=True)
        if not floating_input:
            pixels = pixels.round_().clamp_(0, 255)  # an 8-bit image stays on the 8-bit grid
    rescale_cpu_floats = settings["do_rescale"] and floating_input and pixels.device.type == "cpu"
    if rescale_cpu_floats and pixels.numel() and float(pixels.max()) <= 1.0 and float(pixels.min()) >= 0:
        warnings.warn(
            "It looks like you are trying to rescale already rescaled images (float values in [0, 1]). "
            "Pass do_rescale=False if the images are already scaled.",
            stacklevel=4,
        )
    target.copy_(pixels)
    target.mul_(torch.as_tensor(scale, dtype=torch.float32).to(target.device)[:, None, None])
    target.add_(torch.as_tensor(shift, dtype=torch.float32).to(target.device)[:, None, None])


def exif_orientation(image: PIL.Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image, read from its header without decoding the pixels;
    1 (as stored) when there is none or it is invalid. A PNG's EXIF counts only before its pixels (PIL
    would decode the whole file to look for one after them), for the loaders and the decoder alike."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    value = image.getexif().get(EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def displayed_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) as displayed of stored pixels `width` x `height` with an EXIF `orientation`."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def decode_image(source: str | os.PathLike | bytes | BinaryIO) -> PIL.Image.Image:
    """An encoded image (a file path, its bytes or a binary file) as training, evaluation, prediction and
    the processor's file paths all see it: RGB, 8 bits per channel, as displayed (the EXIF orientation
    applied, `exif_orientation`), 16-bit values scaled to 8 bits, transparency composited onto white.
    PIL's errors (OSError, ValueError, DecompressionBombError) are raised as they come."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    opened = PIL.Image.open(source)
    try:
        orientation = exif_orientation(opened)
        opened.load()
        decoded = _eight_bit(_oriented(opened, orientation), convert_rgb=True)
    except BaseException:
        opened.close()
        raise
    if decoded is not opened:
        opened.close()
    return decoded


def _decode_file(source: SourceImage, index: int) -> None:
    """Decode a lazily opened image (a file path, or a PIL image from `PIL.Image.open`) now, so that a
    truncated or corrupt file is an error naming it."""
    if source.pil is None:
        return
    try:
        source.pil.load()  # a no-op for decoded images
    except (OSError, SyntaxError, ValueError) as error:
        what = repr(source.path) if source.path is not None else "the PIL image"
        raise ValueError(f"images[{index}]: cannot decode {what} ({error}).") from error


def _check_finite_pixels(sources: list[SourceImage], targets: list[torch.Tensor]) -> None:
    """Float inputs must give finite pixel values (8-bit ones do, with the checked rescale and
    normalization): NaN or inf, or values beyond float32, are an error naming the image. One
    device-to-host copy for the whole batch."""
    floating = [i for i, s in enumerate(sources) if s.tensor is not None and s.tensor.is_floating_point()]
    if not floating:
        return
    finite = torch.stack([torch.isfinite(targets[i]).all() for i in floating]).cpu()
    for index, ok in zip(floating, finite.tolist()):
        if not ok:
            source = sources[index].tensor
            problem = (
                "contains NaN or inf"
                if not torch.isfinite(source).all()
                else "has values beyond float32 range"
            )
            raise ValueError(
                f"images[{index}] {problem} (dtype {source.dtype}): images must hold finite pixel values."
            )


def _fill_padding(image: torch.Tensor, height: int, width: int, value: float) -> None:
    """Fill everything of `image` [..., H, W] outside its top-left `height` x `width` region."""
    image[..., :height, width:].fill_(value)
    image[..., height:, :].fill_(value)


def _check_size(index: int, height: int, width: int) -> None:
    if height == 0 or width == 0:
        raise ValueError(f"images[{index}] is empty ({height}x{width} pixels).")


def _channels_last(shape: torch.Size, input_data_format: str | None, index: int) -> bool:
    if input_data_format is not None:
        if input_data_format not in ("channels_first", "channels_last"):
            raise ValueError(
                f"`input_data_format` must be 'channels_first' or 'channels_last', got {input_data_format!r}."
            )
        return input_data_format == "channels_last"
    first, last = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
    if first and last:
        warnings.warn(
            f"images[{index}] has an ambiguous shape {list(shape)}; assuming channels first. Pass "
            "input_data_format='channels_last' if the channels come last.",
            stacklevel=4,
        )
        return False
    if not (first or last):
        raise ValueError(
            f"images[{index}] has shape {list(shape)}: cannot find a channel dimension of size 1, 3 or 4."
        )
    return last


def _oriented(image: PIL.Image.Image, orientation: int) -> PIL.Image.Image:
    """The pixels as displayed: `image` mirrored and/or rotated as its EXIF `orientation` says."""
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _eight_bit(image: PIL.Image.Image, convert_rgb: bool) -> PIL.Image.Image:
    """8-bit content: 16-bit values brought to the 8-bit range (grayscale), then RGB when `convert_rgb`
    (transparency composited onto white, as transformers does; palette, CMYK, grayscale converted)."""
    if image.mode in SIXTEEN_BIT_PIL_MODES:
        eight_bit = (np.asarray(image, dtype=np.float32) / 257.0).round().clip(0, 255).astype(np.uint8)
        image = PIL.Image.fromarray(eight_bit, mode="L")
    if not convert_rgb or image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _tensor_to_rgb(pixels: torch.Tensor) -> torch.Tensor:
    """[1|3|4, H, W] -> [3, H, W]: grayscale repeated, alpha composited onto white."""
    if pixels.shape[0] == 1:
        return pixels.expand(3, -1, -1)
    if pixels.shape[0] == 4:
        white = 255.0 if not pixels.is_floating_point() or pixels.max() > 1 else 1.0
        alpha = pixels[3:].float() / white
        return (pixels[:3].float() * alpha + white * (1 - alpha)).to(pixels.dtype)
    return pixels


__all__ = ["SourceImage", "decode_image", "displayed_size", "exif_orientation", "load_source", "make_pixels"]
