"""Commands that run no model never import torch, diffusers, transformers or open_clip; CLIP BPE counts
equal open_clip's own tokenizer."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

HEAVY = ("torch", "diffusers", "transformers", "open_clip")
PROBE = """
import sys
from histosynth.cli import main
sys.argv = ["histosynth"] + sys.argv[1:]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules))
print("EXIT=" + str(code))
"""


def probe(*args: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True,
                          timeout=120)
    lines = dict(ln.split("=", 1) for ln in done.stdout.splitlines() if ln.startswith(("HEAVY=", "EXIT=")))
    return lines["HEAVY"], lines["EXIT"]


def test_light_commands_import_no_model_library(tmp_path, real_reports):
    ws = str(tmp_path / "ws")
    for args in (["--help"], ["-q", "reports", str(real_reports), "-w", ws, "--preset", "tiny-cpu"],
                 ["-q", "summarize", "-w", ws, "--budget", "20"], ["-q", "summarize", "-w", ws, "--tokenizer", "clip"],
                 ["summary-stats", "-w", ws]):
        heavy, code = probe(*args)
        assert code in ("0", "None"), args
        assert heavy == "", (args, heavy)


@pytest.fixture(scope="module")
def texts():
    from conftest import shared_file

    real_reports = shared_file("reports/tcga_brca_reports_52.csv")
    from histosynth.reports.extractive import summarize_report
    from histosynth.tokenizers import load_tokenizer

    reports = pd.read_csv(real_reports).text.tolist()
    summaries = [summarize_report(t, b, load_tokenizer("minilm")).text for t in reports for b in (20, 154)]
    odd = ["café naïve — “quoted” &amp; &lt;b&gt; 3/3 5.5cm ’s 70 % x²", "  MIXED   case\tWHITESPACE\n", ""]
    return reports + summaries + odd


def test_clip_bpe_equals_open_clip(texts):
    from open_clip.tokenizer import SimpleTokenizer

    from histosynth.tokenizers import load_tokenizer

    ours, theirs = load_tokenizer("clip"), SimpleTokenizer()
    for text in texts:
        assert ours.encode(text) == theirs.encode(text), text[:80]
    assert ours.bos_id == theirs.sot_token_id and ours.eos_id == theirs.eot_token_id


def test_minilm_equals_transformers(texts):
    from transformers import AutoTokenizer

    from histosynth.tokenizers import load_tokenizer, minilm_path

    ours, theirs = load_tokenizer("minilm"), AutoTokenizer.from_pretrained(str(minilm_path()))
    for text in texts:
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text[:80]
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (theirs.cls_token_id, theirs.sep_token_id, theirs.pad_token_id)
    assert ours.decode(ours.encode("Invasive ductal carcinoma.")) == theirs.decode(
        theirs("Invasive ductal carcinoma.", add_special_tokens=False)["input_ids"], skip_special_tokens=True)


@pytest.mark.unit
def test_help_imports_no_model_library():
    """One probe of the check above: `histosynth --help` exits 0 without torch and its kin."""
    heavy, code = probe("--help")
    assert code in ("0", "None") and heavy == ""


@pytest.mark.unit
def test_each_command_registers_only_its_own_module():
    """main() imports only the named command's CLI module: the map must say which module adds which command."""
    import importlib

    import typer

    from histosynth.cli import COMMANDS, STAGE_CLIS, app, modules_for

    registered = {}
    for module in STAGE_CLIS:
        one = typer.Typer()
        importlib.import_module(module).register(one)
        registered.update({c.name: module for c in one.registered_commands})
    assert registered == COMMANDS
    assert sorted(c.name for c in app.registered_commands) == sorted(COMMANDS)
    assert modules_for(["-q", "summarize", "-w", "ws"]) == ("histosynth.reports.cli",)
    assert modules_for(["--help"]) == modules_for([]) == modules_for(["nosuch"]) == STAGE_CLIS
    assert modules_for(["--help", "summarize"]) == STAGE_CLIS
