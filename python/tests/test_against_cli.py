"""The Python package and the `pikv` command give the same answers, ids and
KV bytes for the same press and inputs (both on one thread, so that they run
the same floating-point operations)."""
import unittest

import pikv
from helpers import NEEDLE, QUESTION, cli_json, context_file, model, needle_context


class AnswersEqualTheCLIs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.context = needle_context()
        cls.path = context_file(cls.context)

    def check_press(self, press, query_aware=False, questions=(QUESTION,)):
        py = model().answer(self.context, list(questions), press, max_new_tokens=12, query_aware=query_aware)
        args = ["generate", "--context-file", self.path, "--press", py.press, "-n", "12"]
        for q in questions:
            args += ["--question", q]
        c = cli_json(*(args + ["--query-aware"] * query_aware))
        self.assertEqual(py.ids, [a["ids"] for a in c["answers"]])
        self.assertEqual(py.answers, [a["text"] for a in c["answers"]])
        self.assertEqual(py.kv_bytes_before, c["kv_bytes_before"])
        self.assertEqual(py.kv_bytes_after, c["kv_bytes_after"])
        self.assertEqual(py.context_tokens, c["prompt_tokens"])
        self.assertEqual(py.query_aware, c["mode"] == "query-aware")
        return py, c

    def test_no_compression_finds_the_pass_key(self):
        py, _ = self.check_press(None)
        self.assertIn("52817", py.answers[0])
        self.assertEqual(py.kv_bytes_before, py.kv_bytes_after)
        # 516 bytes per entry (K and V in float32 plus a 4-byte position), per head and layer
        cfg = model().config
        per_token = cfg["n_layer"] * cfg["n_head"] * (2 * cfg["head_dim"] * 4 + 4)
        self.assertEqual(py.kv_bytes_before, py.context_tokens * per_token)

    def test_snapkv_keeps_half(self):
        py, _ = self.check_press(pikv.SnapKVPress(compression_ratio=0.5))
        cfg = model().config
        per_entry = 2 * cfg["head_dim"] * 4 + 4
        kept = py.context_tokens // 2  # floor(L * (1 - 0.5)) per head
        self.assertEqual(py.kv_bytes_after, cfg["n_layer"] * cfg["n_head"] * kept * per_entry)
        self.assertAlmostEqual(py.kv_kept, kept / py.context_tokens, places=9)

    def test_snapkv_query_aware(self):
        self.check_press(pikv.SnapKVPress(compression_ratio=0.5), query_aware=True)

    def test_duo_attention(self):
        py, _ = self.check_press(pikv.DuoAttentionPress(head_compression_ratio=0.5))
        self.assertLess(py.kv_bytes_after, py.kv_bytes_before)
        self.assertIn("52817", py.answers[0])

    def test_composed_and_wrapped(self):
        self.check_press(pikv.ComposedPress([pikv.KnormPress(0.2), pikv.StreamingLLMPress(0.3)]))
        self.check_press(pikv.AdaKVPress(pikv.ExpectedAttentionPress(0.5)))

    def test_several_questions(self):
        py, _ = self.check_press(pikv.KnormPress(0.25), questions=(QUESTION, " The pass key, once more:"))
        self.assertEqual(len(py.answers), 2)

    def test_decoding_press(self):
        self.check_press(pikv.DecodingPress(pikv.KnormPress(), compression_interval=4, target_size=200))

    def test_routing_statistics(self):
        press = pikv.MoERouterPress(0.1, router="eplb", route=True)
        py, c = self.check_press(press)
        self.assertEqual(set(py.routing), set(c["routing"]))
        for key, value in c["routing"].items():
            self.assertAlmostEqual(py.routing[key], value, places=12, msg=key)
        self.assertIsNone(model().answer(self.context, QUESTION, "snapkv:0.5", max_new_tokens=1).routing)


class GenerationEqualsTheCLIs(unittest.TestCase):
    PROMPT = "In the beginning"

    def test_greedy(self):
        py = model().generate(self.PROMPT, max_new_tokens=12)
        c = cli_json("generate", "--prompt", self.PROMPT, "-n", "12")
        self.assertEqual(py.ids, c["ids"])
        self.assertEqual(py.text, c["text"])
        self.assertEqual(py.kv_bytes, c["kv_bytes"])
        self.assertEqual(py.prompt_tokens, c["prompt_tokens"])

    def test_sampled(self):
        py = model().generate(self.PROMPT, max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.95, seed=7)
        c = cli_json("generate", "--prompt", self.PROMPT, "-n", "12", "--temperature", "0.9", "--top-k", "40",
                     "--top-p", "0.95", "--seed", "7")
        self.assertEqual(py.ids, c["ids"])
        self.assertNotEqual(py.ids, model().generate(self.PROMPT, max_new_tokens=12).ids)

    def test_with_a_press(self):
        text = needle_context()
        py = model().generate(text, max_new_tokens=8, press="snapkv:0.5")
        c = cli_json("generate", "--context-file", context_file(text), "--press", "snapkv:0.5", "-n", "8")
        self.assertEqual(py.ids, c["ids"])
        self.assertEqual(py.kv_bytes, c["kv_bytes"])
        self.assertEqual(py.compression.kv_bytes_before, c["kv_bytes_before"])


class Compare(unittest.TestCase):
    def test_kv_type_and_weights_reach_the_command(self):
        report = pikv.compare(["none"], context_tokens=300, tasks=1, reps=1, max_new_tokens=4, threads=1,
                              weights="f32", kv_type="q8_0")
        cfg = model().config
        # q8_0: 34 bytes per 32 values, keys and values, and a 4-byte position.
        row = 2 * cfg["head_dim"] // 32 * 34 + 4
        self.assertEqual(report["methods"][0]["kv_bytes"], 300 * cfg["n_layer"] * cfg["n_head"] * row)

    def test_report_of_the_command(self):
        report = pikv.compare(["none", ("Duo 0.5", pikv.DuoAttentionPress(0.5))], context_tokens=600, tasks=1,
                              reps=1, max_new_tokens=8, threads=1)
        names = [m["name"] for m in report["methods"]]
        self.assertEqual(names, ["No Compression", "Duo 0.5"])
        none, duo = report["methods"]
        cfg = model().config
        # The command's default cache: f16 keys and values (2 bytes each) and a 4-byte position.
        self.assertEqual(none["kv_bytes"], 600 * cfg["n_layer"] * cfg["n_head"] * (2 * cfg["head_dim"] * 2 + 4))
        self.assertLess(duo["kv_bytes"], none["kv_bytes"])
        self.assertTrue(none["answer_correct"])
        self.assertIn("recommendation", report)

    def test_error_is_the_commands_line(self):
        with self.assertRaises(pikv.Error) as e:
            pikv.compare(["frobnicate:0.5"], tasks=1, reps=1)
        self.assertIn("frobnicate", str(e.exception))
        self.assertTrue(str(e.exception).startswith("pikv compare:"), str(e.exception))


if __name__ == "__main__":
    unittest.main()
