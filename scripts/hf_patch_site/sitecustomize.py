"""Started by every Python process of a patched ``scripts/hf_model_tests.py`` run (this folder
is first on its ``PYTHONPATH``): with ``FFNLAB_PATCH_LOG`` set, it installs
``ffnlab_patch_plugin``'s construction hook, so that the worker processes the distributed tests
spawn (``torch.multiprocessing.spawn``), which load no pytest plugin, patch their models too.
Without the variable it does nothing."""

import os

if os.environ.get("FFNLAB_PATCH_LOG"):
    import ffnlab_patch_plugin

    ffnlab_patch_plugin.install()
