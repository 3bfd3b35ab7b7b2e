"""Self-pretraining for ListOps (Amos et al. 2024, "Never Train from Scratch", arXiv:2310.02980):
masked-LM pretraining of the ListOps encoder on the *training inputs* of `tjax_listops` only (no
labels, no other data), then fine-tuning with configs/listops.py and `init_from`:

    transformer-jax train --config configs/listops_mlm.py --workdir /tmp/listops_mlm --config.budget_minutes=15
    transformer-jax train --config configs/listops.py --workdir /tmp/listops_spt \
        --config.init_from=/tmp/listops_mlm --config.budget_minutes=15

The same encoder as configs/listops.py (a `MaskedLM` shares its embedding and layers with the
`EncoderClassifier`; the pooler and classifier start fresh). 15% of the expression tokens are
selected (80% [MASK], 10% a random token, 10% kept); the listops tokenizer's [MASK] word serves.
Validation: masked-token accuracy.
"""

import os
import runpy


def _sibling(name: str):
    """The config of another file in configs/ (config files are loaded by path, not as a package)."""
    return runpy.run_path(os.path.join(os.path.dirname(__file__), name))["get_config"]()


def get_config():
    c = _sibling("listops.py")
    c.model_type = "masked_lm"  # tjax_listops' inputs as a masked-LM task (tasks.ALSO)
    c.test_at_end = False  # the masked-token accuracy on validation is what pretraining reports
    return c
