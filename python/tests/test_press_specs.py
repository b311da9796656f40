"""kvpress's press classes write the spec strings of README's press table, and
the library accepts every one of them."""
import unittest

import pikv
from helpers import model


class PressSpecs(unittest.TestCase):
    CASES = [
        (pikv.KnormPress(compression_ratio=0.5), "knorm:0.5"),
        (pikv.SnapKVPress(compression_ratio=0.5), "snapkv:0.5"),
        (pikv.SnapKVPress(0.25, window_size=32, kernel_size=3), "snapkv:0.25,window=32,kernel=3"),
        (pikv.StreamingLLMPress(0.3, n_sink=8), "streaming_llm:0.3,sink=8"),
        (pikv.TOVAPress(0.2), "tova:0.2"),
        (pikv.ObservedAttentionPress(0.2), "observed_attention:0.2"),
        (pikv.ExpectedAttentionPress(0.4, n_sink=2), "expected_attention:0.4,sink=2"),
        (pikv.RandomPress(0.5, seed=7), "random:0.5,seed=7"),
        (pikv.KeyDiffPress(0.1), "keydiff:0.1"),
        (pikv.PyramidKVPress(0.5, beta=10), "pyramidkv:0.5,beta=10"),
        (pikv.AdaKVPress(pikv.ExpectedAttentionPress(0.5)), "adakv(expected_attention):0.5"),
        (pikv.AdaKVPress(pikv.SnapKVPress(0.5, window_size=32), alpha_safeguard=0.1),
         "adakv(snapkv:window=32):0.5,alpha=0.1"),
        (pikv.ChunkKVPress(pikv.SnapKVPress(0.5), chunk_length=10), "chunkkv(snapkv):0.5,chunk=10"),
        (pikv.PerLayerCompressionPress(pikv.KnormPress(), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
         "per_layer(knorm):ratios=0.1/0.2/0.3/0.4/0.5/0.6"),
        (pikv.DecodingPress(pikv.KnormPress(), compression_interval=8, target_size=128),
         "decoding(knorm):every=8,target=128"),
        (pikv.ComposedPress([pikv.KnormPress(0.2), "streaming_llm:0.3"]), "composed[knorm:0.2,streaming_llm:0.3]"),
        (pikv.DuoAttentionPress(head_compression_ratio=0.75), "duo:0.75"),
        (pikv.DuoAttentionPress(0.5, sink_size=16, recent_size=64), "duo:0.5,sink=16,recent=64"),
        (pikv.DuoAttentionPress(), "duo"),
        (pikv.MoERouterPress(0.35, router="hierarchical", top_k=1, route=True),
         "moe_router:0.35,router=hierarchical,top_k=1,route=1"),
        (pikv.EPLBDuoPress(0.5, experts=4), "eplb_duo:0.5,experts=4"),
        (pikv.Press("composed[snapkv:0.5,window=64,duo:0.5]"), "composed[snapkv:0.5,window=64,duo:0.5]"),
    ]

    def test_spec_strings(self):
        for press, spec in self.CASES:
            with self.subTest(spec=spec):
                self.assertEqual(press.spec, spec)
                self.assertEqual(str(press), spec)

    def test_library_builds_every_spec(self):
        # a real answer through each press: the spec is one the library takes
        for press, spec in self.CASES:
            with self.subTest(spec=spec):
                r = model().answer("one two three four five six seven eight", " nine", press, max_new_tokens=1)
                self.assertEqual(r.press, spec)
                self.assertEqual(len(r.answers), 1)

    def test_wrapper_takes_the_inner_ratio(self):
        self.assertEqual(pikv.AdaKVPress(pikv.KnormPress(0.3)).compression_ratio, 0.3)
        self.assertEqual(pikv.ChunkKVPress(pikv.SnapKVPress(0.4)).compression_ratio, 0.4)


if __name__ == "__main__":
    unittest.main()
