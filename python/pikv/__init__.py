"""pikv from Python: GPT-2-family models with a compressible, per-head KV cache,
and KV-cache presses named as in kvpress.

    import pikv
    model = pikv.Model()                                   # the bundled model
    out = model.answer(context, ["What is the pass key?"], pikv.SnapKVPress(compression_ratio=0.5))
    print(out.answers[0], out.kv_bytes_before, out.kv_bytes_after)

The package is ctypes over libpikv.so (include/pikv.h); see README, "Python"."""
from .compare import compare
from .errors import Error
from .model import Generation, Model, QAResult
from .press import (AdaKVPress, ChunkKVPress, ComposedPress, DecodingPress, DuoAttentionPress, EPLBDuoPress,
                    ExpectedAttentionPress, KeyDiffPress, KnormPress, MoERouterPress, ObservedAttentionPress,
                    PerLayerCompressionPress, Press, PyramidKVPress, RandomPress, SnapKVPress, StreamingLLMPress,
                    TOVAPress)
from . import _lib, _locate


def library_path():
    """The libpikv file this package loaded."""
    return _locate.library_path(_lib.lib())


def data_dir():
    """The data directory holding the bundled model and task text."""
    return _locate.data_dir(_lib.lib())


__all__ = ["AdaKVPress", "ChunkKVPress", "ComposedPress", "DecodingPress", "DuoAttentionPress", "EPLBDuoPress",
           "Error", "ExpectedAttentionPress", "Generation", "KeyDiffPress", "KnormPress", "MoERouterPress", "Model",
           "ObservedAttentionPress", "PerLayerCompressionPress", "Press", "PyramidKVPress", "QAResult", "RandomPress",
           "SnapKVPress", "StreamingLLMPress", "TOVAPress", "compare", "data_dir", "library_path"]
