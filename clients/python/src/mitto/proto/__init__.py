"""mitto's protocol core, without I/O: frames, headers, subjects, bodies, negotiation and the
streaming decoder, exactly as ``spec/PROTOCOL.md`` defines them."""

from .bodies import (
    DELIVERY_NAMES,
    POLICY_NAMES,
    Delivery,
    HealthReport,
    Hello,
    MalformedBody,
    Policy,
    StatsReport,
    SubscribeOptions,
    decode_credit,
    decode_opt_u32,
    decode_reason,
    encode_u32,
)
from .compress import available as lz4_available
from .compress import compress, decompress
from .constants import (
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_PAYLOAD,
    HANDSHAKE_MAX_FRAME,
    HEADER_LEN,
    INITIAL_STREAM_CREDIT,
    MAGIC,
    MAX_SUBJECT,
    SERVER_CALL_BIT,
    Feature,
    Flag,
    FrameType,
    Kind,
    feature_names,
    flag_names,
    type_name,
)
from .constants import FRAME_RULES as FRAME_RULES_PUBLIC
from .decoder import Decoder
from .errors import DecodeError, EncodeError
from .fit import fit_answer, utf8_prefix
from .frame import Frame, pack
from .headers import Headers, MalformedHeaders, WellKnown
from .negotiate import Agreed, VersionMismatch, negotiate
from .status import Status, is_caller_error, is_retryable, status_name
from .subject import is_valid_filter, is_valid_literal, matches, subject_error

__all__ = [
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_PAYLOAD",
    "DELIVERY_NAMES",
    "FRAME_RULES_PUBLIC",
    "HANDSHAKE_MAX_FRAME",
    "HEADER_LEN",
    "INITIAL_STREAM_CREDIT",
    "MAGIC",
    "MAX_SUBJECT",
    "POLICY_NAMES",
    "SERVER_CALL_BIT",
    "Agreed",
    "DecodeError",
    "Decoder",
    "Delivery",
    "EncodeError",
    "Feature",
    "Flag",
    "Frame",
    "FrameType",
    "Headers",
    "HealthReport",
    "Hello",
    "Kind",
    "MalformedBody",
    "MalformedHeaders",
    "Policy",
    "StatsReport",
    "Status",
    "SubscribeOptions",
    "VersionMismatch",
    "WellKnown",
    "compress",
    "decode_credit",
    "decode_opt_u32",
    "decode_reason",
    "decompress",
    "encode_u32",
    "feature_names",
    "fit_answer",
    "flag_names",
    "is_caller_error",
    "is_retryable",
    "is_valid_filter",
    "is_valid_literal",
    "lz4_available",
    "matches",
    "negotiate",
    "pack",
    "status_name",
    "subject_error",
    "type_name",
    "utf8_prefix",
]
