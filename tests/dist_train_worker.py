"""One process of a ``torchrun`` training job (used by ``test_train.py``): trains from a JSON config, then writes
a hash of its final weights and what it saw, so the test can check that the processes stayed in step."""

import hashlib
import json
import os
import sys
from pathlib import Path

from hysac.train.trainer import Trainer

cfg = json.loads(Path(sys.argv[1]).read_text())
trainer = Trainer(cfg, log=lambda *a: None)
trainer.fit(resume=False)
h = hashlib.sha256()
for key, value in sorted(trainer.model.checkpoint_state_dict().items()):
    h.update(key.encode())
    h.update(value.detach().float().contiguous().numpy().tobytes())
Path(cfg["out_dir"], f"rank{os.environ['RANK']}.json").write_text(json.dumps(
    {"hash": h.hexdigest(), "world": trainer.world, "rank": trainer.rank, "steps": trainer.state["global_step"]}))
