"""Images and audio in, top-k labels out: the pre- and post-processing a version declared at push
(``domain/processing.py``), run in the replica around the model.

Images (PNG, JPEG, WebP) are decoded with Pillow, converted to RGB or grayscale, resized,
center-cropped and normalized; audio (WAV, FLAC, OGG) is decoded with soundfile, mixed to mono,
resampled with soxr, trimmed or padded, and given to the model as samples or as a log-mel
spectrogram. Each item of a batch is one encoded file (a V2 BYTES element).
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelplane.domain import Signature, TensorSpec
from modelplane.domain.processing import (
    LABEL_OUTPUT,
    SCORE_OUTPUT,
    AudioSpec,
    ImageSpec,
    Processing,
)
from modelplane.domain.signature import AUDIO_CLASSIFICATION, IMAGE_CLASSIFICATION
from modelplane.errors import InvalidInput, UnsupportedModel
from modelplane.runtime.base import Arrays

PROCESSING_METADATA = "modelplane.processing"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_PIXELS = 40_000_000  # a larger image is refused before it is decoded
MIN_RATE, MAX_RATE, MAX_CHANNELS = 1000, 384_000, 8  # audio clips that are read
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# ---- images -----------------------------------------------------------------------------------
def image_array(data: bytes, spec: ImageSpec, index: int = 0) -> np.ndarray:
    """One encoded image as the model's input item (FP32, in the spec's layout)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InvalidInput(
                    f"image {index} is {width}x{height}, above the limit of {MAX_PIXELS} pixels"
                )
            converted = image.convert(spec.mode)
    except InvalidInput:
        raise
    except Exception:  # Pillow says "broken" in many ways: OSError, SyntaxError, ValueError...
        raise InvalidInput(
            f"item {index} is not a PNG, JPEG or WebP image that can be read"
        ) from None
    height, width = spec.resize
    resized = converted.resize((width, height), Image.Resampling.BILINEAR)
    if spec.crop is not None:
        crop_h, crop_w = spec.crop
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        resized = resized.crop((left, top, left + crop_w, top + crop_h))
    pixels = np.asarray(resized, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # grayscale: one channel
    if spec.normalize in ("unit", "imagenet"):
        pixels = pixels / 255.0
    if spec.normalize == "imagenet":
        if spec.channels != 3:
            raise UnsupportedModel("normalize=imagenet needs mode=RGB")
        pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    return pixels.transpose(2, 0, 1) if spec.layout == "NCHW" else pixels


# ---- audio ------------------------------------------------------------------------------------
def _mel_filters(spec: AudioSpec) -> np.ndarray:
    """Triangular filters on the HTK mel scale, [mels, fft // 2 + 1]."""

    def mel(hz: np.ndarray) -> np.ndarray:
        result: np.ndarray = 2595.0 * np.log10(1.0 + hz / 700.0)
        return result

    def hz(m: np.ndarray) -> np.ndarray:
        result: np.ndarray = 700.0 * (10 ** (m / 2595.0) - 1.0)
        return result

    bins = spec.fft // 2 + 1
    edges = hz(np.linspace(0, mel(np.array(spec.rate / 2)), spec.mels + 2))
    freqs = np.linspace(0, spec.rate / 2, bins)
    filters = np.zeros((spec.mels, bins), np.float32)
    for i in range(spec.mels):
        low, mid, high = edges[i], edges[i + 1], edges[i + 2]
        rising = (freqs - low) / max(mid - low, 1e-9)
        falling = (high - freqs) / max(high - mid, 1e-9)
        filters[i] = np.maximum(0, np.minimum(rising, falling))
    return filters


def log_mel(samples: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """A log-mel spectrogram, [frames, mels]: Hann windows of ``fft`` samples every ``hop``."""
    window = np.hanning(spec.fft).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(samples, spec.fft)[:: spec.hop]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    result: np.ndarray = np.log(power @ _mel_filters(spec).T + 1e-6).astype(np.float32)
    return result


def audio_array(data: bytes, spec: AudioSpec, index: int = 0) -> np.ndarray:
    """One encoded clip as the model's input item: samples, or a log-mel spectrogram."""
    import soundfile

    try:
        # only what the model takes is decoded: a clip that says it is hours long (or
        # compresses a thousandfold) costs no more than one of the right length
        with soundfile.SoundFile(io.BytesIO(data)) as clip:
            rate = clip.samplerate
            if not MIN_RATE <= rate <= MAX_RATE or not 1 <= clip.channels <= MAX_CHANNELS:
                raise InvalidInput(
                    f"item {index} has {clip.channels} channel(s) at {rate} Hz; clips of 1 to "
                    f"{MAX_CHANNELS} channels at {MIN_RATE} to {MAX_RATE} Hz are read"
                )
            wanted = int(np.ceil(spec.seconds * rate))
            samples = clip.read(wanted, dtype="float32", always_2d=True)
    except InvalidInput:
        raise
    except Exception:  # libsndfile's errors for a file it cannot read, of any kind
        raise InvalidInput(
            f"item {index} is not a WAV, FLAC or OGG clip that can be read"
        ) from None
    mono = samples.mean(axis=1)
    if rate != spec.rate:
        import soxr

        mono = soxr.resample(mono, rate, spec.rate).astype(np.float32)
    fitted = np.zeros(spec.samples, np.float32)
    fitted[: min(len(mono), spec.samples)] = mono[: spec.samples]
    return fitted if spec.features == "waveform" else log_mel(fitted, spec)


# ---- the wrapper ------------------------------------------------------------------------------
def item_shape(processing: Processing) -> tuple[int, ...]:
    """The shape processing gives one item, before it is fitted to the model's input."""
    if processing.image is not None:
        (height, width), channels = processing.image.size, processing.image.channels
        if processing.image.layout == "NCHW":
            return (channels, height, width)
        return (height, width, channels)
    assert processing.audio is not None
    audio = processing.audio
    return (audio.samples,) if audio.features == "waveform" else (audio.frames, audio.mels)


def fitted_shape(processing: Processing, model_input: TensorSpec) -> tuple[int, ...]:
    """The model's item shape that processing's output is reshaped to (same elements, singleton
    dimensions added or dropped), or UnsupportedModel saying why it cannot be."""
    made = item_shape(processing)
    wanted = model_input.shape[1:]
    if any(d < 0 for d in wanted):  # dynamic: only the rank must be reachable
        if len([d for d in made if d != 1]) > len(wanted):
            raise UnsupportedModel(
                f"the model's input {model_input.name!r} {list(model_input.shape)} cannot take "
                f"the processed {list(made)}"
            )
        core = [d for d in made if d != 1]
        return tuple([1] * (len(wanted) - len(core)) + core)
    if int(np.prod(wanted)) != int(np.prod(made)):
        raise UnsupportedModel(
            f"the preprocessing makes each item {list(made)}, but the model's input "
            f"{model_input.name!r} is {list(model_input.shape)}; change resize/crop/mode (or "
            "the audio settings) to match"
        )
    return tuple(wanted)


def served_signature(processing: Processing, model: Signature) -> Signature:
    """What a version with ``processing`` takes and gives: encoded files in, top-k labels and
    scores out."""
    if len(model.inputs) != 1 or not model.outputs:
        raise UnsupportedModel(
            "preprocessing needs a model with one input (and at least one output)"
        )
    fitted_shape(processing, model.inputs[0])
    classes = model.outputs[0].shape[-1] if model.outputs[0].shape else -1
    if processing.labels and classes > 0 and classes != len(processing.labels):
        raise UnsupportedModel(
            f"the model gives {classes} scores but the labels file has {len(processing.labels)} "
            "labels; give one label per class, in the model's order"
        )
    k = processing.top_k if classes < 0 else min(processing.top_k, classes)
    return Signature(
        (TensorSpec(processing.input_name, "BYTES", (-1,)),),
        (TensorSpec(LABEL_OUTPUT, "BYTES", (-1, k)), TensorSpec(SCORE_OUTPUT, "FP32", (-1, k))),
        IMAGE_CLASSIFICATION if processing.image is not None else AUDIO_CLASSIFICATION,
    )


def top_k(scores: np.ndarray, labels: tuple[str, ...], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best labels and their scores per row; rows that are not probabilities already
    (a negative value, or not summing to 1) go through a softmax first."""
    rows = scores.reshape(scores.shape[0], -1).astype(np.float32)
    sums = rows.sum(axis=1)
    if (rows < 0).any() or not np.allclose(sums, 1.0, atol=1e-3):
        shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
        rows = shifted / shifted.sum(axis=1, keepdims=True)
    k = min(k, rows.shape[1])
    best = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    names = np.array(
        [[labels[i] if i < len(labels) else str(i) for i in row] for row in best], dtype=object
    )
    return names, np.take_along_axis(rows, best, axis=1)


class MediaRuntime:
    """Wraps a runtime whose ONNX file declares processing (metadata ``modelplane.processing``);
    one without it passes straight through."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.signature: Signature = inner.signature
        self._processing: Processing | None = None
        self._fitted: tuple[int, ...] = ()
        self._model_input = ""
        self._model_output = ""

    @property
    def metadata(self) -> Mapping[str, str]:
        found: Mapping[str, str] = self._inner.metadata
        return found

    def load(self) -> None:
        self._inner.load()
        self.signature = self._inner.signature
        raw = self._inner.metadata.get(PROCESSING_METADATA)
        if raw is None:  # nothing to do: calls go straight to the inner runtime
            self.predict = self._inner.predict  # type: ignore[method-assign]
            return
        self._processing = Processing.from_dict(json.loads(raw))
        model = self._inner.signature
        self._fitted = fitted_shape(self._processing, model.inputs[0])
        self._model_input, self._model_output = model.inputs[0].name, model.outputs[0].name
        self.signature = served_signature(self._processing, model)

    def _decode(self, items: np.ndarray) -> np.ndarray:
        processing = self._processing
        assert processing is not None
        if items.ndim != 1 or not items.size:
            raise InvalidInput(
                f"input {processing.input_name!r} must be a 1-D list of at least one file"
            )
        arrays = []
        for i, item in enumerate(items):
            if not isinstance(item, bytes):
                raise InvalidInput(f"item {i} of {processing.input_name!r} is not a file's bytes")
            data = item
            if processing.image is not None:
                arrays.append(image_array(data, processing.image, i))
            else:
                assert processing.audio is not None
                arrays.append(audio_array(data, processing.audio, i))
        return np.stack(arrays).reshape((len(arrays), *self._fitted))

    async def predict(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> Arrays:
        processing = self._processing
        assert processing is not None  # without it, load() routed predict to the inner runtime
        # decoding and resampling in a worker thread: the replica's loop keeps answering meanwhile
        batch = await asyncio.to_thread(self._decode, inputs[processing.input_name])
        scores = (await self._inner.predict({self._model_input: batch},
                                            [self._model_output]))[self._model_output]  # fmt: skip
        names, best = top_k(scores, processing.labels, processing.top_k)
        found = {LABEL_OUTPUT: names, SCORE_OUTPUT: best}
        return {name: found[name] for name in outputs}
