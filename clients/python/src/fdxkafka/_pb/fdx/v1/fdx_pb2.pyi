from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
DTYPE_FLOAT16: DType
DTYPE_FLOAT32: DType
DTYPE_INT8: DType
DTYPE_SPARSE_FLOAT32: DType
DTYPE_UNSPECIFIED: DType
REJECT_REASON_BAD_CLIENT_ID: RejectReason
REJECT_REASON_BAD_NUM_EXAMPLES: RejectReason
REJECT_REASON_CHECKSUM: RejectReason
REJECT_REASON_DUPLICATE: RejectReason
REJECT_REASON_FUTURE_ROUND: RejectReason
REJECT_REASON_INCOMPLETE: RejectReason
REJECT_REASON_NON_FINITE: RejectReason
REJECT_REASON_NORM_BOUND: RejectReason
REJECT_REASON_NOT_SAMPLED: RejectReason
REJECT_REASON_NOT_STORED: RejectReason
REJECT_REASON_OUT_OF_RANGE: RejectReason
REJECT_REASON_OVERSIZE: RejectReason
REJECT_REASON_STALE_ROUND: RejectReason
REJECT_REASON_UNAUTHENTICATED: RejectReason
REJECT_REASON_UNDECODABLE: RejectReason
REJECT_REASON_UNKNOWN_CLIENT: RejectReason
REJECT_REASON_UNSPECIFIED: RejectReason
REJECT_REASON_WRONG_JOB: RejectReason
REJECT_REASON_WRONG_SHAPE: RejectReason

class GetModelRequest(_message.Message):
    __slots__ = ["client_id", "job", "min_round"]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    MIN_ROUND_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    job: str
    min_round: int
    def __init__(self, job: _Optional[str] = ..., min_round: _Optional[int] = ..., client_id: _Optional[str] = ...) -> None: ...

class GlobalModel(_message.Message):
    __slots__ = ["contributors", "contributors_sha256", "deadline", "final", "job", "metrics", "min_clients", "num_contributors", "num_rounds", "params", "published_at", "round", "sampling", "strategy_state", "train_config"]
    class MetricsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MIN_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    NUM_CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_STATE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    contributors: _containers.RepeatedScalarFieldContainer[str]
    contributors_sha256: bytes
    deadline: _timestamp_pb2.Timestamp
    final: bool
    job: str
    metrics: _containers.ScalarMap[str, float]
    min_clients: int
    num_contributors: int
    num_rounds: int
    params: _containers.RepeatedCompositeFieldContainer[Tensor]
    published_at: _timestamp_pb2.Timestamp
    round: int
    sampling: Sampling
    strategy_state: bytes
    train_config: TrainConfig
    def __init__(self, job: _Optional[str] = ..., round: _Optional[int] = ..., params: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., train_config: _Optional[_Union[TrainConfig, _Mapping]] = ..., final: bool = ..., published_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., deadline: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., contributors: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., strategy_state: _Optional[bytes] = ..., num_rounds: _Optional[int] = ..., min_clients: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., num_contributors: _Optional[int] = ..., contributors_sha256: _Optional[bytes] = ...) -> None: ...

class PartitionSpec(_message.Message):
    __slots__ = ["alpha", "num_partitions", "scheme", "seed", "shards_per_client"]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SHARDS_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    alpha: float
    num_partitions: int
    scheme: str
    seed: int
    shards_per_client: int
    def __init__(self, scheme: _Optional[str] = ..., num_partitions: _Optional[int] = ..., seed: _Optional[int] = ..., alpha: _Optional[float] = ..., shards_per_client: _Optional[int] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ["evaluate_clients", "evaluate_count", "evaluate_threshold", "fit_clients", "fit_count", "fit_threshold", "fraction_evaluate", "fraction_fit", "population", "seed"]
    EVALUATE_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FIT_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    FIT_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FRACTION_EVALUATE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIT_FIELD_NUMBER: _ClassVar[int]
    POPULATION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    evaluate_clients: _containers.RepeatedScalarFieldContainer[str]
    evaluate_count: int
    evaluate_threshold: int
    fit_clients: _containers.RepeatedScalarFieldContainer[str]
    fit_count: int
    fit_threshold: int
    fraction_evaluate: float
    fraction_fit: float
    population: int
    seed: int
    def __init__(self, seed: _Optional[int] = ..., population: _Optional[int] = ..., fraction_fit: _Optional[float] = ..., fit_threshold: _Optional[int] = ..., fit_count: _Optional[int] = ..., fit_clients: _Optional[_Iterable[str]] = ..., fraction_evaluate: _Optional[float] = ..., evaluate_threshold: _Optional[int] = ..., evaluate_count: _Optional[int] = ..., evaluate_clients: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitUpdateResponse(_message.Message):
    __slots__ = ["accepted", "reason", "reject_reason", "round"]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    reject_reason: RejectReason
    round: int
    def __init__(self, accepted: bool = ..., reason: _Optional[str] = ..., round: _Optional[int] = ..., reject_reason: _Optional[_Union[RejectReason, str]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ["data", "dtype", "name", "scale", "shape"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: DType
    name: str
    scale: float
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ..., scale: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ["model_received", "sent", "train_end", "train_start"]
    MODEL_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_END_FIELD_NUMBER: _ClassVar[int]
    TRAIN_START_FIELD_NUMBER: _ClassVar[int]
    model_received: _timestamp_pb2.Timestamp
    sent: _timestamp_pb2.Timestamp
    train_end: _timestamp_pb2.Timestamp
    train_start: _timestamp_pb2.Timestamp
    def __init__(self, model_received: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., train_start: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., train_end: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., sent: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrainConfig(_message.Message):
    __slots__ = ["batch_size", "dataset", "holdout_fraction", "learning_rate", "local_epochs", "max_examples", "model", "model_dtype", "partition", "proximal_mu", "seed", "topk_fraction", "update_dtype"]
    ASYNC_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    MODEL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    dataset: str
    holdout_fraction: float
    learning_rate: float
    local_epochs: int
    max_examples: int
    model: str
    model_dtype: DType
    partition: PartitionSpec
    proximal_mu: float
    seed: int
    topk_fraction: float
    update_dtype: DType
    def __init__(self, model: _Optional[str] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., local_epochs: _Optional[int] = ..., partition: _Optional[_Union[PartitionSpec, _Mapping]] = ..., seed: _Optional[int] = ..., dataset: _Optional[str] = ..., max_examples: _Optional[int] = ..., proximal_mu: _Optional[float] = ..., holdout_fraction: _Optional[float] = ..., update_dtype: _Optional[_Union[DType, str]] = ..., model_dtype: _Optional[_Union[DType, str]] = ..., topk_fraction: _Optional[float] = ..., **kwargs) -> None: ...

class TransferManifest(_message.Message):
    __slots__ = ["chunk_count", "chunk_crc32c", "chunk_offsets", "chunk_partitions", "chunk_size", "sha256", "total_size", "transfer_id"]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CRC32C_FIELD_NUMBER: _ClassVar[int]
    CHUNK_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    chunk_count: int
    chunk_crc32c: _containers.RepeatedScalarFieldContainer[int]
    chunk_offsets: _containers.RepeatedScalarFieldContainer[int]
    chunk_partitions: _containers.RepeatedScalarFieldContainer[int]
    chunk_size: int
    sha256: bytes
    total_size: int
    transfer_id: str
    def __init__(self, transfer_id: _Optional[str] = ..., total_size: _Optional[int] = ..., chunk_count: _Optional[int] = ..., chunk_size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., chunk_crc32c: _Optional[_Iterable[int]] = ..., chunk_partitions: _Optional[_Iterable[int]] = ..., chunk_offsets: _Optional[_Iterable[int]] = ...) -> None: ...

class TransferPart(_message.Message):
    __slots__ = ["chunk", "manifest", "whole"]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    WHOLE_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    manifest: TransferManifest
    whole: bytes
    def __init__(self, manifest: _Optional[_Union[TransferManifest, _Mapping]] = ..., chunk: _Optional[bytes] = ..., whole: _Optional[bytes] = ...) -> None: ...

class Update(_message.Message):
    __slots__ = ["base_round", "client_id", "evaluate_only", "is_delta", "job", "metrics", "num_examples", "params", "timings"]
    class MetricsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BASE_ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    IS_DELTA_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    base_round: int
    client_id: str
    evaluate_only: bool
    is_delta: bool
    job: str
    metrics: _containers.ScalarMap[str, float]
    num_examples: int
    params: _containers.RepeatedCompositeFieldContainer[Tensor]
    timings: Timings
    def __init__(self, job: _Optional[str] = ..., client_id: _Optional[str] = ..., base_round: _Optional[int] = ..., num_examples: _Optional[int] = ..., params: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., is_delta: bool = ..., metrics: _Optional[_Mapping[str, float]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., evaluate_only: bool = ...) -> None: ...

class WatchModelsRequest(_message.Message):
    __slots__ = ["client_id", "from_round", "job"]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ROUND_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    from_round: int
    job: str
    def __init__(self, job: _Optional[str] = ..., from_round: _Optional[int] = ..., client_id: _Optional[str] = ...) -> None: ...

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
