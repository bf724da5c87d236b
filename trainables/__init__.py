"""Model families (one package each) and the shared MoE core and data loaders.

We run offline: no model is fetched from the Hugging Face hub. Every entry point that loads a
model (a Ray Train worker, a Serve replica, ``moe-orch evaluate``, a benchmark) imports this
package first, so the hub's offline switch is set here, once, before ``huggingface_hub`` reads
it (it does when first imported; transformers asks it). ``HF_HUB_OFFLINE=0`` in the environment
turns it off (``trainables.data.online_allowed`` reads it too).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
