"""Failures raise pikv.Error with the library's message, closed objects say
so, and nothing leaks across 1,000 create/free cycles."""
import ctypes
import gc
import os
import unittest

import pikv
from pikv import _lib
from helpers import QUESTION, model

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2  # glibc >= 2.33; Debian 12 has 2.36


def heap_bytes():
    """Bytes malloc has handed out and not got back (mmapped blocks included)."""
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


class Errors(unittest.TestCase):
    def test_bad_spec_carries_the_librarys_message(self):
        with self.assertRaises(pikv.Error) as e:
            model().answer("one two three", QUESTION, pikv.Press("snapkv:ratio=abc"))
        self.assertEqual(str(e.exception), "press 'snapkv': ratio=abc is not a number")
        self.assertEqual(str(e.exception), _lib.last_error())

    def test_unknown_press_and_bad_ratio(self):
        with self.assertRaisesRegex(pikv.Error, "frobnicate"):
            model().answer("one two three", QUESTION, "frobnicate:0.5")
        with self.assertRaisesRegex(pikv.Error, r"ratio=1\.5 is out of range"):
            model().answer("one two three", QUESTION, pikv.KnormPress(1.5))
        with self.assertRaisesRegex(pikv.Error, "give the ratio to adakv"):
            model().answer("one two three", QUESTION, pikv.Press("adakv(knorm:0.5)"))

    def test_missing_model_names_the_file(self):
        with self.assertRaises(pikv.Error) as e:
            pikv.Model("/nonexistent/model")
        self.assertIn("/nonexistent/model/config.json", str(e.exception))

    def test_inputs(self):
        with self.assertRaisesRegex(pikv.Error, "context: the text is empty"):
            model().answer("", QUESTION)
        with self.assertRaisesRegex(pikv.Error, "question 1: the text is empty"):
            model().answer("one two", [""])
        with self.assertRaisesRegex(pikv.Error, "max_new_tokens"):
            model().generate("one two", max_new_tokens=-1)
        with self.assertRaisesRegex(pikv.Error, "n_positions"):
            model().generate("one two three " * 1000, max_new_tokens=1)
        with self.assertRaisesRegex(pikv.Error, "query-aware mode needs a question"):
            model().answer("one two", (), "snapkv:0.5", query_aware=True)
        with self.assertRaisesRegex(pikv.Error, "greedily"):
            model().generate("one two", press="snapkv:0.5", temperature=0.5)
        with self.assertRaises(TypeError):
            model().answer(b"bytes", QUESTION)

    def test_closed_model(self):
        m = pikv.Model(threads=1)
        with m:
            self.assertEqual(m.tokenize("Hello world"), [4853, 461, 2033])
        m.close()  # twice is fine
        with self.assertRaisesRegex(pikv.Error, "the model is closed"):
            m.generate("Hello", max_new_tokens=1)


class Lifetime(unittest.TestCase):
    """Two measures, after a warm-up of 20 cycles and after the cycles:
    the resident set (/proc/self/statm), which must stay within 1 MiB, and the
    bytes malloc has handed out (glibc's mallinfo2), which must stay within
    16 KiB, i.e. under 16 bytes per cycle over 1,000 cycles: a leaked press,
    session, answer or token array -- each at least one 32-byte malloc chunk --
    fails it. (RSS alone would not: a small leaked block lands in pages that
    the freed KV cache left resident, and RSS does not move.)"""

    RSS_BOUND = 1024 * 1024
    HEAP_BOUND = 16 * 1024

    def check_cycles(self, n, step):
        for _ in range(20):
            step()
        gc.collect()  # garbage is not a leak: count only what nothing can free
        rss, heap = rss_bytes(), heap_bytes()
        for _ in range(n):
            step()
        gc.collect()
        rss, heap = rss_bytes() - rss, heap_bytes() - heap
        self.assertLess(rss, self.RSS_BOUND, "RSS grew by %d bytes over %d cycles" % (rss, n))
        self.assertLess(heap, self.HEAP_BOUND, "malloc's bytes in use grew by %d over %d cycles" % (heap, n))

    def test_answer_cycles(self):
        # each: a press tree (composed, adakv inside) and a session created and
        # freed, tokens, an answer and its ids
        m = model()
        press = pikv.ComposedPress([pikv.AdaKVPress(pikv.SnapKVPress(0.3)), pikv.DuoAttentionPress(0.5)])
        self.check_cycles(1000, lambda: m.answer("The pass key is 7123.", " The pass key is", press,
                                                 max_new_tokens=1))

    def test_generate_cycles(self):
        # the same session and token paths as above; fewer cycles to keep the suite short
        m = model()
        self.check_cycles(300, lambda: m.generate("one two three", max_new_tokens=1))

    def test_error_cycles(self):
        m = model()

        def fail():
            with self.assertRaises(pikv.Error):
                m.answer("one two three", " four", "composed[knorm:0.2,snapkv:abc]")
        self.check_cycles(1000, fail)

    def test_model_cycles(self):
        # a model takes ~0.1 s to load: 20 + 50 cycles, where a leaked model
        # (~60 MB of float32 weights) or tokenizer would show at once
        def load():
            with pikv.Model(threads=1) as m:
                m.tokenize("Hello")
        self.check_cycles(50, load)


if __name__ == "__main__":
    unittest.main()
