"""pytest plugin for ``scripts/hf_model_tests.py``: every transformers model that a test builds is
patched by :func:`ffnlab.patch_hf` right after it is built, as a careful user would patch it.

    pytest -p ffnlab_patch_plugin tests/models/mixtral/test_modeling_mixtral.py

(``scripts/`` on ``PYTHONPATH``; ``scripts/hf_patch_site/`` too, so that the worker processes
the distributed tests spawn patch their models as well: its ``sitecustomize`` calls
:func:`install` in every Python process started with ``FFNLAB_PATCH_LOG`` set.)

"Right after it is built" means two moments:

* the end of the outermost ``PreTrainedModel.post_init``: transformers calls ``post_init`` last in
  every model's ``__init__``, also for the models nested inside (``MixtralModel`` inside
  ``MixtralForCausalLM``); a nested one is left for its outermost model, found by walking the
  caller frames for another model's ``__init__``. A model whose parameters are on the meta
  device (``from_pretrained`` builds it there before loading) is not patched then;
* the return of ``PreTrainedModel.from_pretrained``, with its weights loaded (a model built
  inside ``from_pretrained`` is never patched before that).

This wraps ``post_init`` and ``from_pretrained`` on ``PreTrainedModel`` inside the test process
only: it is a test tool that stands in for the user's ``patch_hf(model)`` line, not something
ffnlab does (the library never touches transformers' classes). ``patch_hf``'s warnings reach the
test as a user would see them; each patching is also appended as one JSON line to
``$FFNLAB_PATCH_LOG/patch-<pid>.jsonl``: the test (``PYTEST_CURRENT_TEST``, which spawned workers
inherit), the model class, how it was built, how many MLP / mixture-of-experts blocks were
patched, what was left and why (``patch_hf``'s warning text), or the error ``patch_hf`` raised
(re-raised after logging, as the user's call would raise it).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import warnings

#: Environment variable naming the folder of the per-process JSON-lines logs.
LOG_ENV = "FFNLAB_PATCH_LOG"

_state = threading.local()  # depth of from_pretrained calls on this thread
#: ``(PreTrainedModel, its post_init, its from_pretrained)`` once wrapped: install is idempotent
#: and :func:`uninstall` puts them back.
_installed: list[tuple] = []


def _current_test() -> tuple[str, str]:
    """``(node id, phase)`` from pytest's ``PYTEST_CURRENT_TEST`` (``"path::name (call)"``)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    test, _, phase = current.rpartition(" (")
    return (test, phase.rstrip(")")) if test else (current, "")


def _log(record: dict) -> None:
    folder = os.environ.get(LOG_ENV)
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    test, phase = _current_test()
    record = {"test": test, "phase": phase, "pid": os.getpid(), **record}
    with open(os.path.join(folder, f"patch-{os.getpid()}.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _on_meta(model) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


def _nested(model, base) -> bool:
    """Whether ``model`` is being built inside another model's ``__init__`` (walks the frames)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "__init__":
            owner = frame.f_locals.get("self")
            if owner is not model and isinstance(owner, base):
                return True
        frame = frame.f_back
    return False


def patch_built_model(model, how: str) -> int:
    """Run ``ffnlab.patch_hf(model)``, log the outcome, pass its warnings on; return the count."""
    import ffnlab

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            count = ffnlab.patch_hf(model)
        except Exception as error:
            _log({"model": type(model).__name__, "how": how, "patched": 0, "left": [],
                  "error": f"{type(error).__name__}: {error}"})
            raise
    left = [str(w.message) for w in caught if "ffnlab.patch_hf" in str(w.message)]
    _log({"model": type(model).__name__, "how": how, "patched": count, "left": left,
          "error": None})
    for w in caught:  # what a user calling patch_hf would see
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return count


def install() -> None:
    """Wrap ``PreTrainedModel.post_init`` and ``from_pretrained`` in this process (once)."""
    if _installed:
        return
    from transformers.modeling_utils import PreTrainedModel

    post_init = PreTrainedModel.post_init
    from_pretrained = PreTrainedModel.from_pretrained.__func__

    @functools.wraps(post_init)
    def patched_post_init(self, *args, **kwargs):
        result = post_init(self, *args, **kwargs)
        if getattr(_state, "loading", 0) == 0 and not _nested(self, PreTrainedModel):
            if _on_meta(self):
                _log({"model": type(self).__name__, "how": "init", "patched": 0, "left": [],
                      "error": None, "skipped": "parameters on the meta device"})
            else:
                patch_built_model(self, "init")
        return result

    @functools.wraps(from_pretrained)
    def patched_from_pretrained(cls, *args, **kwargs):
        _state.loading = getattr(_state, "loading", 0) + 1
        try:
            result = from_pretrained(cls, *args, **kwargs)
        finally:
            _state.loading -= 1
        model = result[0] if isinstance(result, tuple) else result
        if _state.loading == 0 and isinstance(model, PreTrainedModel):
            patch_built_model(model, "from_pretrained")
        return result

    _installed.append((PreTrainedModel, post_init, PreTrainedModel.__dict__["from_pretrained"]))
    PreTrainedModel.post_init = patched_post_init
    PreTrainedModel.from_pretrained = classmethod(patched_from_pretrained)


def uninstall() -> None:
    """Put back what :func:`install` wrapped (for tests of this plugin)."""
    while _installed:
        cls, post_init, from_pretrained = _installed.pop()
        cls.post_init = post_init
        cls.from_pretrained = from_pretrained


def pytest_configure(config) -> None:
    install()


def pytest_report_header(config) -> str:
    return f"ffnlab_patch_plugin: every model patched by ffnlab.patch_hf once built; log in " \
           f"{os.environ.get(LOG_ENV) or '(none: set ' + LOG_ENV + ')'}"
