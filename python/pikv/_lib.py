"""The C library's functions and structs as ctypes sees them: the one place to
update when include/pikv.h changes.

Only functions declared in pikv.h are used. Each entry of _FUNCTIONS is
(name, result type, argument types), copied from the header's prototypes."""
import ctypes
from ctypes import POINTER, c_char_p, c_double, c_float, c_int, c_int32, c_long, c_size_t, c_uint64, c_void_p

from . import _locate


class Config(ctypes.Structure):
    """pikv_config."""
    _fields_ = [("n_layer", c_int), ("n_head", c_int), ("n_embd", c_int), ("head_dim", c_int),
                ("n_inner", c_int), ("n_positions", c_int), ("vocab_size", c_int),
                ("layer_norm_epsilon", c_float), ("scale_attn_weights", c_int),
                ("scale_attn_by_inverse_layer_idx", c_int), ("bos_token_id", c_int), ("eos_token_id", c_int)]


class Sampling(ctypes.Structure):
    """pikv_sampling."""
    _fields_ = [("greedy", c_int), ("temperature", c_float), ("top_k", c_int), ("top_p", c_float),
                ("seed", c_uint64)]


class Generation(ctypes.Structure):
    """pikv_generation."""
    _fields_ = [("ids", POINTER(c_int32)), ("n_ids", c_int), ("prefill_s", c_double), ("decode_s", c_double)]


class QARequest(ctypes.Structure):
    """pikv_qa_request."""
    _fields_ = [("context", POINTER(c_int32)), ("n_context", c_int), ("questions", POINTER(POINTER(c_int32))),
                ("n_question", POINTER(c_int)), ("n_questions", c_int), ("max_new_tokens", c_int),
                ("stop_id", c_int), ("query_aware", c_int)]


class QAResult(ctypes.Structure):
    """pikv_qa_result."""
    _fields_ = [("n_answers", c_int), ("answers", POINTER(POINTER(c_int32))), ("n_answer", POINTER(c_int)),
                ("kv_bytes_before", c_size_t), ("kv_bytes_after", c_size_t), ("prefill_s", c_double),
                ("compression_s", c_double), ("decode_s", c_double), ("decode_tokens", c_int)]


class RoutingStats(ctypes.Structure):
    """pikv_routing_stats."""
    _fields_ = [("queries", c_long), ("fraction_read", c_double), ("sampled", c_long), ("mass_missed", c_double),
                ("mass_missed_max", c_double)]


# Handles (pikv_model *, pikv_tokenizer *, pikv_session *, pikv_press *) are
# opaque: c_void_p, None when NULL.
_FUNCTIONS = [
    ("pikv_last_error", c_char_p, []),
    ("pikv_clear_error", None, []),
    ("pikv_free", None, [c_void_p]),
    ("pikv_model_load", c_void_p, [c_char_p]),
    ("pikv_model_free", None, [c_void_p]),
    ("pikv_model_config", POINTER(Config), [c_void_p]),
    ("pikv_tokenizer_load", c_void_p, [c_char_p]),
    ("pikv_tokenizer_free", None, [c_void_p]),
    ("pikv_tokenize", c_int, [c_void_p, c_char_p, c_size_t, POINTER(POINTER(c_int32)), POINTER(c_size_t)]),
    ("pikv_detokenize", c_void_p, [c_void_p, POINTER(c_int32), c_size_t, POINTER(c_size_t)]),
    ("pikv_session_new", c_void_p, [c_void_p, c_int]),
    ("pikv_session_free", None, [c_void_p]),
    ("pikv_session_kv_bytes", c_size_t, [c_void_p]),
    ("pikv_generate", c_int, [c_void_p, POINTER(c_int32), c_int, c_int, POINTER(Sampling), c_int,
                              POINTER(Generation)]),
    ("pikv_press_new", c_void_p, [c_char_p, c_void_p, c_char_p]),
    ("pikv_press_free", None, [c_void_p]),
    ("pikv_press_routing_stats", c_int, [c_void_p, POINTER(RoutingStats), c_int]),
    ("pikv_answer", c_int, [c_void_p, c_void_p, POINTER(QARequest), POINTER(QAResult)]),
    ("pikv_qa_result_free", None, [POINTER(QAResult)]),
]

_lib = None


def lib():
    """The loaded library with every function of _FUNCTIONS declared (loaded once)."""
    global _lib
    if _lib is None:
        handle = _locate.load_library()
        for name, restype, argtypes in _FUNCTIONS:
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = handle
    return _lib


def last_error():
    """pikv_last_error() as text."""
    message = lib().pikv_last_error()
    return message.decode("utf-8", "replace") if message else "unknown error"
