"""pikv.compare: the `pikv compare` experiment, its report as a dict.

The comparison (rotated repetitions, needle tasks, perplexity and KL against
No Compression, the recommendation) is the command's, built from internals
that pikv.h does not export. Rather than give it a second, Python-side copy,
or a new public C entry point over those internals, this runs the `pikv`
command installed beside the library (`pikv compare --json`) and parses its
JSON: the report is exactly what the command prints, and the JSON form is the
one documented and tested with the command."""
import json
import os
import subprocess

from . import _lib, _locate
from .errors import Error
from .press import as_press


def _methods(methods):
    """--methods text: 'SPEC;NAME=SPEC;...' from presses, specs, (name, press)
    pairs or a {name: press} dict."""
    if isinstance(methods, dict):
        methods = list(methods.items())
    items = []
    for m in methods:
        if isinstance(m, tuple):
            name, press = m
            items.append("%s=%s" % (name, as_press(press).spec))
        else:
            items.append(as_press(m).spec)
    return ";".join(items)


def compare(methods=None, model=None, *, ratio=None, experts=None, top_k=None, eplb_share=None, scenario=None,
            context_tokens=None, context_file=None, question=None, max_new_tokens=None, query_aware=False,
            reps=None, tasks=None, detailed=False, seed=None, threads=None, haystack=None, weights=None,
            kv_type=None, executable=None):
    """Run `pikv compare --json` and return its report. The keyword arguments
    are the command's options (None: its default); methods are presses or
    specs, optionally named, and model is a directory (default: the bundled
    model). Raises pikv.Error with the command's error line when it fails."""
    options = [("--methods", _methods(methods) if methods is not None else None),
               ("--model", os.fspath(model) if model is not None else None),
               ("--ratio", ratio), ("--experts", experts), ("--top-k", top_k), ("--eplb-share", eplb_share),
               ("--scenario", scenario), ("--context-tokens", context_tokens),
               ("--context-file", os.fspath(context_file) if context_file is not None else None),
               ("--question", question), ("--max-new-tokens", max_new_tokens), ("--reps", reps),
               ("--tasks", tasks), ("--seed", seed), ("--threads", threads),
               ("--haystack", os.fspath(haystack) if haystack is not None else None),
               ("--weights", weights), ("--kv-type", kv_type)]
    argv = [executable or _locate.executable(_lib.lib()), "compare", "--json"]
    for flag, value in options:
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--query-aware"] * bool(query_aware) + ["--detailed"] * bool(detailed)
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise Error(lines[-1] if lines else "%s exited with status %d" % (argv[0], done.returncode))
    try:
        return json.loads(done.stdout.decode("utf-8", "replace"))
    except ValueError as e:
        raise Error("pikv compare --json: not JSON: %s" % e) from None
