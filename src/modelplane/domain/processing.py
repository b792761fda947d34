"""Pre- and post-processing declared for a version at push: what turns image or audio bytes into
the model's input tensor, and its output into top-k labels with scores. Pure data: parsed and
checked here, run in the replica (``runtime/media.py``).

Spec text, as ``--preprocess`` takes it::

    image:resize=224,crop=224,mode=RGB,layout=NCHW,normalize=imagenet
    audio:rate=16000,seconds=1,features=logmel,mels=40

``normalize``: ``unit`` (pixels / 255), ``imagenet`` (unit, then ImageNet's mean and std per
channel) or ``none`` (0..255). Audio ``features``: ``waveform`` (the samples) or ``logmel``
(a log-mel spectrogram, frames x mels, from ``fft`` and ``hop`` sample windows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

IMAGE_INPUT = "image"
AUDIO_INPUT = "audio"
LABEL_OUTPUT = "label"
SCORE_OUTPUT = "score"
MAX_LABELS = 100_000
MAX_SIDE = 4096


class ProcessingError(ValueError):
    """A spec that cannot be used; the message says which part and what is allowed."""


@dataclass(frozen=True, slots=True)
class ImageSpec:
    resize: tuple[int, int]  # (height, width) the image is resized to
    crop: tuple[int, int] | None = None  # a center crop after resizing
    mode: str = "RGB"  # RGB or L (grayscale)
    layout: str = "NCHW"  # or NHWC
    normalize: str = "unit"  # unit, imagenet, none

    @property
    def size(self) -> tuple[int, int]:
        return self.crop or self.resize

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1


@dataclass(frozen=True, slots=True)
class AudioSpec:
    rate: int = 16000  # samples per second the model expects
    seconds: float = 1.0  # clips are trimmed or zero-padded to this length
    features: str = "waveform"  # or logmel
    mels: int = 40
    fft: int = 400
    hop: int = 160

    @property
    def samples(self) -> int:
        return round(self.rate * self.seconds)

    @property
    def frames(self) -> int:
        return 1 + max(0, self.samples - self.fft) // self.hop


@dataclass(frozen=True, slots=True)
class Processing:
    """What a version's replica does around the model."""

    image: ImageSpec | None = None
    audio: AudioSpec | None = None
    labels: tuple[str, ...] = ()
    top_k: int = 5

    @property
    def input_name(self) -> str:
        return IMAGE_INPUT if self.image is not None else AUDIO_INPUT

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"labels": list(self.labels), "top_k": self.top_k}
        if self.image is not None:
            doc["image"] = asdict(self.image)
        if self.audio is not None:
            doc["audio"] = asdict(self.audio)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Processing:
        """A declaration read back from a pushed file's metadata, checked by the same rules as
        ``--preprocess`` text (the file may not have been written by modelplane)."""
        try:
            kind = "image" if doc.get("image") is not None else "audio"
            settings = doc[kind]
            text = ",".join(
                f"{key}={_setting(value)}" for key, value in settings.items() if value is not None
            )
            labels = [str(label) for label in doc.get("labels", ())]
            return _parse(f"{kind}:{text}", labels, int(doc.get("top_k", 5)))
        except ProcessingError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ProcessingError(f"the processing declaration is malformed: {exc}") from None


def _setting(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "x".join(str(part) for part in value)
    return str(value)


def _int(key: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ProcessingError(f"{key} must be a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise ProcessingError(f"{key} must be between {low} and {high}, got {number}")
    return number


def _side(key: str, value: str) -> tuple[int, int]:
    height, _, width = value.lower().partition("x")
    h = _int(key, height, 1, MAX_SIDE)
    return h, _int(key, width, 1, MAX_SIDE) if width else h


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    for option in allowed:
        if value.lower() == option.lower():
            return option
    raise ProcessingError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")


def _pairs(kind: str, text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ProcessingError(f"{kind}: {part!r} is not KEY=VALUE")
        pairs[key.strip().lower()] = value.strip()
    return pairs


def parse_image(text: str) -> ImageSpec:
    pairs = _pairs("image", text)
    allowed = {"resize", "crop", "mode", "layout", "normalize"}
    unknown = sorted(set(pairs) - allowed)
    if unknown:
        raise ProcessingError(
            f"image: unknown setting {unknown[0]!r}; use {', '.join(sorted(allowed))}"
        )
    if "resize" not in pairs:
        raise ProcessingError("image: resize=SIZE (or HEIGHTxWIDTH) is required")
    resize = _side("resize", pairs["resize"])
    crop = _side("crop", pairs["crop"]) if "crop" in pairs else None
    if crop is not None and (crop[0] > resize[0] or crop[1] > resize[1]):
        raise ProcessingError(f"image: crop {crop} is larger than resize {resize}")
    return ImageSpec(
        resize, crop,
        _choice("mode", pairs.get("mode", "RGB"), ("RGB", "L")),
        _choice("layout", pairs.get("layout", "NCHW"), ("NCHW", "NHWC")),
        _choice("normalize", pairs.get("normalize", "unit"), ("unit", "imagenet", "none")),
    )  # fmt: skip


def parse_audio(text: str) -> AudioSpec:
    pairs = _pairs("audio", text)
    allowed = {"rate", "seconds", "features", "mels", "fft", "hop"}
    unknown = sorted(set(pairs) - allowed)
    if unknown:
        raise ProcessingError(
            f"audio: unknown setting {unknown[0]!r}; use {', '.join(sorted(allowed))}"
        )
    try:
        seconds = float(pairs.get("seconds", "1"))
    except ValueError:
        raise ProcessingError(f"seconds must be a number, got {pairs['seconds']!r}") from None
    if not 0 < seconds <= 600:
        raise ProcessingError(f"seconds must be above 0 and at most 600, got {seconds:g}")
    spec = AudioSpec(
        rate=_int("rate", pairs.get("rate", "16000"), 1000, 192000),
        seconds=seconds,
        features=_choice("features", pairs.get("features", "waveform"), ("waveform", "logmel")),
        mels=_int("mels", pairs.get("mels", "40"), 1, 512),
        fft=_int("fft", pairs.get("fft", "400"), 16, 65536),
        hop=_int("hop", pairs.get("hop", "160"), 1, 65536),
    )
    if spec.features == "logmel" and spec.samples < spec.fft:
        raise ProcessingError(f"audio: {spec.seconds:g} s at {spec.rate} Hz is shorter than fft")
    return spec


def parse(preprocess: str | None, labels: list[str] | None, top_k: int = 5) -> Processing | None:
    """A ``--preprocess`` text and the lines of a ``--labels`` file; None when both are absent."""
    if not preprocess and not labels:
        return None
    if not preprocess:
        raise ProcessingError("--labels needs --preprocess (image:... or audio:...)")
    return _parse(preprocess, labels or [], top_k)


def _parse(preprocess: str, labels: list[str], top_k: int) -> Processing:
    kind, colon, rest = preprocess.partition(":")
    kind = kind.strip().lower()
    if kind not in ("image", "audio") or not colon:
        raise ProcessingError(
            f"--preprocess must start with image: or audio:, got {preprocess!r}; e.g. "
            "image:resize=224,normalize=imagenet"
        )
    cleaned = [label.strip() for label in labels]
    if len(cleaned) > MAX_LABELS or any(not label for label in cleaned):
        raise ProcessingError(f"labels: one non-empty label per line, at most {MAX_LABELS}")
    if not 1 <= top_k <= 1000:
        raise ProcessingError(f"top_k must be between 1 and 1000, got {top_k}")
    if kind == "image":
        return Processing(image=parse_image(rest), labels=tuple(cleaned), top_k=top_k)
    return Processing(audio=parse_audio(rest), labels=tuple(cleaned), top_k=top_k)
