from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("audio", "filename", "top_k", "min_confidence")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    filename: str
    top_k: int
    min_confidence: float
    def __init__(self, audio: _Optional[bytes] = ..., filename: _Optional[str] = ..., top_k: _Optional[int] = ..., min_confidence: _Optional[float] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("data", "filename", "top_k", "min_confidence")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    filename: str
    top_k: int
    min_confidence: float
    def __init__(self, data: _Optional[bytes] = ..., filename: _Optional[str] = ..., top_k: _Optional[int] = ..., min_confidence: _Optional[float] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "duration_s", "sample_rate", "top", "label")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    duration_s: float
    sample_rate: int
    top: _containers.RepeatedCompositeFieldContainer[LabelScore]
    label: str
    def __init__(self, model: _Optional[str] = ..., duration_s: _Optional[float] = ..., sample_rate: _Optional[int] = ..., top: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., label: _Optional[str] = ...) -> None: ...

class TimelineChunk(_message.Message):
    __slots__ = ("data", "filename", "hop_s", "top_k", "min_confidence")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    HOP_S_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    filename: str
    hop_s: float
    top_k: int
    min_confidence: float
    def __init__(self, data: _Optional[bytes] = ..., filename: _Optional[str] = ..., hop_s: _Optional[float] = ..., top_k: _Optional[int] = ..., min_confidence: _Optional[float] = ...) -> None: ...

class TimelineWindow(_message.Message):
    __slots__ = ("start_s", "end_s", "top", "label")
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    start_s: float
    end_s: float
    top: _containers.RepeatedCompositeFieldContainer[LabelScore]
    label: str
    def __init__(self, start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., top: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., label: _Optional[str] = ...) -> None: ...

class LabelSpan(_message.Message):
    __slots__ = ("label", "start_s", "end_s")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    label: str
    start_s: float
    end_s: float
    def __init__(self, label: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ...) -> None: ...

class TimelineResponse(_message.Message):
    __slots__ = ("model", "duration_s", "sample_rate", "window_s", "hop_s", "windows", "summary")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    HOP_S_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    model: str
    duration_s: float
    sample_rate: int
    window_s: float
    hop_s: float
    windows: _containers.RepeatedCompositeFieldContainer[TimelineWindow]
    summary: _containers.RepeatedCompositeFieldContainer[LabelSpan]
    def __init__(self, model: _Optional[str] = ..., duration_s: _Optional[float] = ..., sample_rate: _Optional[int] = ..., window_s: _Optional[float] = ..., hop_s: _Optional[float] = ..., windows: _Optional[_Iterable[_Union[TimelineWindow, _Mapping]]] = ..., summary: _Optional[_Iterable[_Union[LabelSpan, _Mapping]]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model", "labels", "feature_settings_json", "metrics_json", "engine", "precision", "info_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    feature_settings_json: str
    metrics_json: str
    engine: str
    precision: str
    info_json: str
    def __init__(self, model: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., feature_settings_json: _Optional[str] = ..., metrics_json: _Optional[str] = ..., engine: _Optional[str] = ..., precision: _Optional[str] = ..., info_json: _Optional[str] = ...) -> None: ...

class ListenRequest(_message.Message):
    __slots__ = ("pcm", "sample_rate", "hop_s", "top_k", "min_confidence", "smoothing")
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    HOP_S_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    sample_rate: int
    hop_s: float
    top_k: int
    min_confidence: float
    smoothing: int
    def __init__(self, pcm: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., hop_s: _Optional[float] = ..., top_k: _Optional[int] = ..., min_confidence: _Optional[float] = ..., smoothing: _Optional[int] = ...) -> None: ...

class ListenEvent(_message.Message):
    __slots__ = ("event", "label", "start_s", "end_s")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    event: str
    label: str
    start_s: float
    end_s: float
    def __init__(self, event: _Optional[str] = ..., label: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ...) -> None: ...

class ListenResponse(_message.Message):
    __slots__ = ("window", "event")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    window: TimelineWindow
    event: ListenEvent
    def __init__(self, window: _Optional[_Union[TimelineWindow, _Mapping]] = ..., event: _Optional[_Union[ListenEvent, _Mapping]] = ...) -> None: ...
