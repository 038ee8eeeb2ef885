"""How tests/data/legacy_graph_v1/graph.json was made: run with the code before issue 11 (commit 6a98251),
from the repository root: ``.venv/bin/python tests/data/legacy_graph_v1/make_legacy_graph.py OUT``. Only
its ``graph.json`` (the record older code wrote) is kept; the test makes the program and weights it
describes by the same steps with today's code (checked once to equal the old files bit for bit)."""
import sys
from pathlib import Path
import torch
from safetensors.torch import save_file
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[3])]
from _compression_helpers import CFG, LINEAR_8_4, LAB2_PRUNE, tiny_graph
from mase_lite.models import build_model, example_inputs
from passes import run_pass

out = Path(sys.argv[1])
g = tiny_graph()
from _compression_helpers import Q
qcfg = {"by": "type", "default": {"config": {"name": "NA"}}, "linear": {"config": Q(12, 9)}, "embedding": {"config": {"name": "integer", "weight_width": 8, "weight_frac_width": 5}},
        "attention": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 3}}}
run_pass(g, "quantize", qcfg)
run_pass(g, "prune", LAB2_PRUNE)
g.eval()
x = example_inputs(build_model(CFG), batch=3, seq=9, seed=5)
with torch.no_grad():
    logits = g(**x).logits
g.save(out)
save_file({"input_ids": x["input_ids"], "attention_mask": x["attention_mask"], "logits": logits.contiguous()},
          out / "expected.safetensors")
print(logits)
