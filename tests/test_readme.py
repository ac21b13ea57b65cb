"""The README stays true: its quickstart runs, and CI runs its install and test commands."""

import re
from pathlib import Path

import numpy as np
import peft
import transformers

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_quickstart_runs_and_exports(tmp_path, monkeypatch):
    code = re.search(r"## Python quickstart\n\n```python\n(.*?)```", README, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["logits"].shape[-1] == 3
    merged = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "out" / "merged")
    assert merged.config.id2label == {0: "O", 1: "B-PER", 2: "I-PER"}
    base = transformers.AutoModelForTokenClassification.from_pretrained(scope["path"], num_labels=3)
    adapted = peft.PeftModel.from_pretrained(base, tmp_path / "out" / "adapter")
    assert adapted.peft_config["default"].r == 8


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    tests = re.search(r"## Tests\n\n```bash\n(.*?)\n```", README, re.S).group(1)
    install, run = tests.split(" && python -m pytest")[0], "python -m pytest" + tests.split(" && python -m pytest")[1]
    for step in install.split(" && "):
        assert step.replace("pip install", "python -m pip install -q") in ci, step
    assert run in ci.splitlines(), run
    main = re.search(r"## Install and run the main job\n.*?```bash\n(.*?)\n```", README, re.S).group(1)
    assert "jaxkernel train configs/bert_ner_lora.yaml" in main and (ROOT / "configs" / "bert_ner_lora.yaml").exists()
