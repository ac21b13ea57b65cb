"""``tpu_scripts/colab_quickstart.ipynb`` runs top to bottom on CPU with small parameters,
offline (the packaged MiniLM, ../shared/data/wikiann-en), and its export cell writes a
directory that ``transformers`` loads and that predicts like the trained JAX model.

Parameters are injected the way papermill does it: a cell placed right after the cell
tagged ``parameters`` overrides its values.
"""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "tpu_scripts" / "colab_quickstart.ipynb"


def small_parameters(shared_data: Path, tmp_path: Path) -> dict:
    return {
        "INSTALL": False, "DATA_SOURCE": str(shared_data / "wikiann-en"), "MAX_LENGTH": 32, "STEPS": 4,
        "BATCH_SIZE": 8, "MAX_TRAIN_EXAMPLES": 64, "MAX_EVAL_EXAMPLES": 32,
        "RUN_DIR": str(tmp_path / "run"), "EXPORT_DIR": str(tmp_path / "export"),
    }


def test_notebook_has_a_parameters_cell():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


@pytest.mark.slow
def test_notebook_runs_on_cpu_and_exports(tmp_path, shared_data, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    params = small_parameters(shared_data, tmp_path)
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)

    # The kernel inherits this environment: one CPU device, no hub.
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "JAX 0." in text and "on cpu" in text
    assert "test entity F1:" in text
    diff = float(text.split("max |PyTorch - JAX| logit difference:")[1].split()[0])
    assert diff < 1e-4, f"exported model disagrees with JAX by {diff}"

    import transformers

    export = Path(params["EXPORT_DIR"])
    model = transformers.AutoModelForTokenClassification.from_pretrained(export)
    assert type(model).__name__ == "BertForTokenClassification"
    assert {"B-PER", "I-ORG", "O"} <= set(model.config.id2label.values())
    transformers.AutoTokenizer.from_pretrained(export)
