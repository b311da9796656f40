"""Presses: KV-cache compression methods, named by pikv's spec strings
(README, "Presses"), and kvpress's press classes as thin names over them.

A press here is only its spec: the library builds the press for a model when
one is used (Model.answer, Model.generate), so one press object works with
any model. kvpress's parameter names map onto the spec's keys; a parameter
left at None is left out of the spec, so pikv's own default applies."""
from .errors import Error


def _value(v):
    """A parameter value as spec text."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "/".join(_value(x) for x in v)
    return str(v)


def _params(ratio, params):
    """'ratio,key=value,...' (the ratio bare, first) for the given parameters."""
    items = [_value(ratio)] if ratio is not None else []
    items += ["%s=%s" % (k, _value(v)) for k, v in params.items() if v is not None]
    return ",".join(items)


class Press:
    """A press given by its spec, e.g. Press("snapkv:0.5"),
    Press("adakv(expected_attention):0.5"), Press("composed[knorm:0.2,streaming_llm:0.3]")."""

    compression_ratio = None

    def __init__(self, spec):
        if not isinstance(spec, str):
            raise TypeError("a press spec is a string, e.g. 'snapkv:0.5'")
        self.spec = spec

    def _inner_spec(self):
        """The spec to write inside a wrapper: wrappers take the ratio
        themselves, so named presses leave theirs out (see _NamedPress)."""
        return self.spec

    def __str__(self):
        return self.spec

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self.spec)

    def __eq__(self, other):
        return isinstance(other, Press) and self.spec == other.spec

    def __hash__(self):
        return hash(self.spec)


def as_press(press):
    """A Press from a Press, a spec string or None (no compression)."""
    if press is None:
        return Press("none")
    if isinstance(press, Press):
        return press
    if isinstance(press, str):
        return Press(press)
    raise TypeError("press: expected a pikv.Press or a spec string, got %s" % type(press).__name__)


class _NamedPress(Press):
    """name:ratio,key=value,...: a press with its ratio (None: pikv's default)
    and its parameters."""

    def __init__(self, name, compression_ratio, **params):
        self.compression_ratio = compression_ratio
        self._name, self._extra = name, params
        rest = _params(compression_ratio, params)
        super().__init__(name + (":" + rest if rest else ""))

    def _inner_spec(self):
        """Inside a wrapper, which takes the ratio itself: without the ratio."""
        rest = _params(None, self._extra)
        return self._name + (":" + rest if rest else "")


class KnormPress(_NamedPress):
    """knorm: keeps the keys with the smallest norm."""

    def __init__(self, compression_ratio=0.0):
        super().__init__("knorm", compression_ratio)


class StreamingLLMPress(_NamedPress):
    """streaming_llm: the first n_sink entries and the most recent ones."""

    def __init__(self, compression_ratio=0.0, n_sink=None):
        super().__init__("streaming_llm", compression_ratio, sink=n_sink)


class SnapKVPress(_NamedPress):
    """snapkv: mean attention from the last window_size queries, pooled over kernel_size."""

    def __init__(self, compression_ratio=0.0, window_size=None, kernel_size=None):
        super().__init__("snapkv", compression_ratio, window=window_size, kernel=kernel_size)


class TOVAPress(_NamedPress):
    """tova: attention from the last query, averaged over the layer's heads."""

    def __init__(self, compression_ratio=0.0):
        super().__init__("tova", compression_ratio)


class ObservedAttentionPress(_NamedPress):
    """observed_attention: attention received during the prefill (H2O)."""

    def __init__(self, compression_ratio=0.0):
        super().__init__("observed_attention", compression_ratio)


class ExpectedAttentionPress(_NamedPress):
    """expected_attention: expected attention of future queries, times ||v||."""

    def __init__(self, compression_ratio=0.0, n_sink=None):
        super().__init__("expected_attention", compression_ratio, sink=n_sink)


class RandomPress(_NamedPress):
    """random: a random subset, drawn from seed."""

    def __init__(self, compression_ratio=0.0, seed=None):
        super().__init__("random", compression_ratio, seed=seed)


class KeyDiffPress(_NamedPress):
    """keydiff: the keys least aligned with the mean unit key."""

    def __init__(self, compression_ratio=0.0):
        super().__init__("keydiff", compression_ratio)


class PyramidKVPress(_NamedPress):
    """pyramidkv: SnapKV's choice with budgets shrinking linearly with depth."""

    def __init__(self, compression_ratio=0.0, window_size=None, kernel_size=None, beta=None):
        super().__init__("pyramidkv", compression_ratio, window=window_size, kernel=kernel_size, beta=beta)


class MoERouterPress(_NamedPress):
    """moe_router, pikv's own: per head, key-space experts each keep their share
    of the budget; router is one of base, topk_balanced, eplb, adaptive, pikv,
    hierarchical; route=True makes later queries read only their top_k experts."""

    def __init__(self, compression_ratio=0.0, router=None, experts=None, top_k=None, capacity=None, groups=None,
                 sink=None, window=None, route=None, sample=None):
        super().__init__("moe_router", compression_ratio, router=router, experts=experts, top_k=top_k,
                         capacity=capacity, groups=groups, sink=sink, window=window, route=route, sample=sample)


def _wrap(name, press, ratio, params):
    """name(inner):params, the inner press written without its ratio."""
    rest = _params(ratio, params)
    return "%s(%s)%s" % (name, as_press(press)._inner_spec(), ":" + rest if rest else "")


class AdaKVPress(Press):
    """adakv: the inner press's scores ranked across all heads of a layer, each
    head first keeping its own top alpha_safeguard share. The ratio is the
    inner press's, as in kvpress."""

    def __init__(self, press, alpha_safeguard=None):
        self.press = as_press(press)
        self.compression_ratio = self.press.compression_ratio
        super().__init__(_wrap("adakv", self.press, self.compression_ratio, {"alpha": alpha_safeguard}))


class ChunkKVPress(Press):
    """chunkkv: whole chunks of chunk_length entries, by the inner press's mean
    score; the ratio is the inner press's."""

    def __init__(self, press, chunk_length=None):
        self.press = as_press(press)
        self.compression_ratio = self.press.compression_ratio
        super().__init__(_wrap("chunkkv", self.press, self.compression_ratio, {"chunk": chunk_length}))


class PerLayerCompressionPress(Press):
    """per_layer: the inner press with one ratio per layer."""

    def __init__(self, press, compression_ratios):
        self.press = as_press(press)
        self.compression_ratios = list(compression_ratios)
        super().__init__(_wrap("per_layer", self.press, None, {"ratios": self.compression_ratios}))


class DecodingPress(Press):
    """decoding: while generating, every compression_interval tokens each head
    goes back to target_size entries, chosen by the inner press."""

    def __init__(self, base_press, compression_interval=None, target_size=None, window_size=None):
        self.press = as_press(base_press)
        super().__init__(_wrap("decoding", self.press, None, {"every": compression_interval, "target": target_size,
                                                              "window": window_size}))


class ComposedPress(Press):
    """composed: each press in turn on what the previous ones kept."""

    def __init__(self, presses):
        self.presses = [as_press(p) for p in presses]
        if not self.presses:
            raise Error("ComposedPress: give at least one press")
        super().__init__("composed[%s]" % ",".join(p.spec for p in self.presses))


class DuoAttentionPress(_NamedPress):
    """duo (DuoAttention): retrieval heads keep everything, the streaming heads
    (the share head_compression_ratio of all heads, by the model's pattern, or
    the one in the directory `pattern`) keep sink_size + recent_size entries."""

    def __init__(self, head_compression_ratio=None, sink_size=None, recent_size=None, pattern=None,
                 prefill_chunk=None):
        self.head_compression_ratio = head_compression_ratio
        super().__init__("duo", head_compression_ratio, sink=sink_size, recent=recent_size, pattern=pattern,
                         prefill_chunk=prefill_chunk)


class EPLBDuoPress(_NamedPress):
    """eplb_duo, pikv's own: the MoE router balanced by DeepSeek's EPLB, then
    DuoAttention, splitting compression_ratio by eplb_share."""

    def __init__(self, compression_ratio=None, eplb_share=None, experts=None, top_k=None, pattern=None):
        super().__init__("eplb_duo", compression_ratio, eplb_share=eplb_share, experts=experts, top_k=top_k,
                         pattern=pattern)
