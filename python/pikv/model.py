"""A model and its tokenizer, and kvpress's pipeline over them: answer
questions about a context through a compressed KV cache, or generate."""
import ctypes
import os
from ctypes import POINTER, byref, c_int, c_int32, c_size_t
from dataclasses import dataclass, field
from typing import List, Optional

from . import _lib, _locate
from .errors import Error
from .press import as_press


@dataclass
class QAResult:
    """What Model.answer returns: one answer per question, and what the press did."""
    answers: List[str]                 # decoded text of each answer
    ids: List[List[int]]               # their token ids
    press: str                         # the spec that ran
    query_aware: bool
    context_tokens: int
    kv_bytes_before: int               # the first compression: the cache before its press ran
    kv_bytes_after: int                # ... and after it
    prefill_s: float                   # context and question forward passes, presses excluded
    compression_s: float               # inside presses
    decode_s: float                    # generated tokens after the first of each answer
    decode_tokens: int
    routing: Optional[dict] = None     # query-time routing statistics (moe_router route=1)

    @property
    def kv_kept(self):
        """The share of the KV cache the press kept (1.0 without compression)."""
        return self.kv_bytes_after / self.kv_bytes_before if self.kv_bytes_before else 1.0


@dataclass
class Generation:
    """What Model.generate returns."""
    text: str
    ids: List[int]
    prompt_tokens: int
    kv_bytes: int                      # the cache at the end (with a press: right after compressing)
    prefill_s: float
    decode_s: float
    compression: Optional[QAResult] = field(default=None, repr=False)  # with a press: its figures


class _Handles:
    """The C objects one call creates, freed in reverse order on exit: a
    session must go before the press it used."""

    def __init__(self, lib):
        self.lib, self.frees = lib, []

    def own(self, pointer, free):
        self.frees.append((free, pointer))
        return pointer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for free, pointer in reversed(self.frees):
            free(pointer)


class Model:
    """A GPT-2-family model loaded from a Hugging Face directory (path=None:
    the bundled model, found as the `pikv` command finds it). threads <= 0
    uses every core. Free it with close() or a with block; it is also freed
    when collected."""

    def __init__(self, path=None, threads=0):
        self._lib = _lib.lib()
        self._model = self._tok = None
        self.path = os.fspath(path) if path is not None else _locate.model_dir(self._lib)
        self.threads = int(threads)
        encoded = self.path.encode()
        self._model = self._lib.pikv_model_load(encoded) or self._fail()
        self._tok = self._lib.pikv_tokenizer_load(encoded) or self._fail()

    def _fail(self, context=None):
        message = _lib.last_error()
        raise Error("%s: %s" % (context, message) if context else message)

    def close(self):
        """Free the model and tokenizer (idempotent)."""
        if self._tok:
            self._lib.pikv_tokenizer_free(self._tok)
        if self._model:
            self._lib.pikv_model_free(self._model)
        self._model = self._tok = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_lib", None) is not None:
            self.close()

    def _handle(self):
        if not self._model:
            raise Error("the model is closed")
        return self._model

    @property
    def config(self):
        """The model's hyper-parameters (config.json) as a dict."""
        c = self._lib.pikv_model_config(self._handle()).contents
        return {name: getattr(c, name) for name, _ in c._fields_}

    def _tokenize(self, handles, text, what):
        """text -> (C array of ids owned by handles, count); what names the input in errors."""
        if not isinstance(text, str):
            raise TypeError("%s: expected a string, got %s" % (what, type(text).__name__))
        data = text.encode()
        ids, n = POINTER(c_int32)(), c_size_t()
        self._handle()
        if self._lib.pikv_tokenize(self._tok, data, len(data), byref(ids), byref(n)):
            self._fail(what)
        handles.own(ids, self._lib.pikv_free)
        if n.value == 0:
            raise Error("%s: the text is empty" % what)
        return ids, n.value

    def tokenize(self, text):
        """GPT-2 byte-level BPE token ids of text."""
        with _Handles(self._lib) as h:
            ids, n = self._tokenize(h, text, "text")
            return ids[:n]

    def detokenize(self, ids):
        """The text of token ids (bytes that do not form UTF-8 become U+FFFD)."""
        ids = list(ids)
        self._handle()
        array = (c_int32 * len(ids))(*ids)
        n = c_size_t()
        text = self._lib.pikv_detokenize(self._tok, array, len(ids), byref(n)) or self._fail("ids")
        try:
            return ctypes.string_at(text, n.value).decode("utf-8", "replace")
        finally:
            self._lib.pikv_free(text)

    def _session(self, handles):
        session = self._lib.pikv_session_new(self._handle(), self.threads) or self._fail()
        return handles.own(session, self._lib.pikv_session_free)

    def _press(self, handles, press):
        spec = as_press(press).spec
        handle = self._lib.pikv_press_new(spec.encode(), self._handle(), self.path.encode()) or self._fail()
        return handles.own(handle, self._lib.pikv_press_free), spec

    def _routing(self, press):
        st = _lib.RoutingStats()
        if self._lib.pikv_press_routing_stats(press, byref(st), 0):
            self._lib.pikv_clear_error()
            return None
        return {name: getattr(st, name) for name, _ in st._fields_}

    def answer(self, context, questions=(), press=None, max_new_tokens=32, query_aware=False):
        """kvpress's pipeline: compress the context once with the press (a
        pikv.Press, a spec string, or None for no compression), then answer
        each question greedily against it, the cache rewound between
        questions; query_aware=True compresses context + question together,
        once per question. questions may be one string; with none, the
        context itself is continued. Returns a QAResult."""
        if isinstance(questions, str):
            questions = [questions]
        questions = list(questions)
        if max_new_tokens < 0:
            raise Error("max_new_tokens: must be >= 0, got %d" % max_new_tokens)
        with _Handles(self._lib) as h:
            context_ids, n_context = self._tokenize(h, context, "context")
            tokenized = [self._tokenize(h, q, "question %d" % (i + 1)) for i, q in enumerate(questions)]
            q_ids = (POINTER(c_int32) * max(len(tokenized), 1))(*[ids for ids, _ in tokenized])
            q_lens = (c_int * max(len(tokenized), 1))(*[n for _, n in tokenized])
            press_handle, spec = self._press(h, press)
            session = self._session(h)
            rq = _lib.QARequest(context=context_ids, n_context=n_context, questions=q_ids, n_question=q_lens,
                                n_questions=len(tokenized), max_new_tokens=int(max_new_tokens),
                                stop_id=self.config["eos_token_id"], query_aware=int(bool(query_aware)))
            res = _lib.QAResult()
            if self._lib.pikv_answer(session, press_handle, byref(rq), byref(res)):
                self._fail()
            h.own(byref(res), self._lib.pikv_qa_result_free)
            ids = [res.answers[i][:res.n_answer[i]] for i in range(res.n_answers)]
            return QAResult(answers=[self.detokenize(a) for a in ids], ids=ids, press=spec,
                            query_aware=bool(query_aware), context_tokens=n_context,
                            kv_bytes_before=res.kv_bytes_before, kv_bytes_after=res.kv_bytes_after,
                            prefill_s=res.prefill_s, compression_s=res.compression_s, decode_s=res.decode_s,
                            decode_tokens=res.decode_tokens, routing=self._routing(press_handle))

    def generate(self, prompt, max_new_tokens=32, press=None, temperature=None, top_k=None, top_p=None, seed=None):
        """Prefill the prompt and generate up to max_new_tokens, stopping at
        end-of-text: greedy, or sampled when any of temperature (default 1),
        top_k (0 = all), top_p (1 = all) or seed (0) is given -- as
        `pikv generate`. With a press, the prompt is compressed first and the
        continuation is greedy."""
        sampled = any(v is not None for v in (temperature, top_k, top_p, seed))
        if press is not None:
            if sampled:
                raise Error("press: a compressed prompt is continued greedily; drop temperature/top_k/top_p/seed")
            r = self.answer(prompt, (), press, max_new_tokens)
            return Generation(text=r.answers[0], ids=r.ids[0], prompt_tokens=r.context_tokens,
                              kv_bytes=r.kv_bytes_after, prefill_s=r.prefill_s, decode_s=r.decode_s, compression=r)
        if max_new_tokens < 0:
            raise Error("max_new_tokens: must be >= 0, got %d" % max_new_tokens)
        sampling = _lib.Sampling(greedy=int(not sampled), temperature=1.0 if temperature is None else temperature,
                                 top_k=top_k or 0, top_p=1.0 if top_p is None else top_p, seed=seed or 0)
        with _Handles(self._lib) as h:
            ids, n = self._tokenize(h, prompt, "prompt")
            session = self._session(h)
            gen = _lib.Generation()
            if self._lib.pikv_generate(session, ids, n, int(max_new_tokens), byref(sampling),
                                       self.config["eos_token_id"], byref(gen)):
                self._fail("prompt")
            h.own(gen.ids, self._lib.pikv_free)
            out = gen.ids[:gen.n_ids]
            return Generation(text=self.detokenize(out), ids=out, prompt_tokens=n,
                              kv_bytes=self._lib.pikv_session_kv_bytes(session), prefill_s=gen.prefill_s,
                              decode_s=gen.decode_s)
