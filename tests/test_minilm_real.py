"""The real all-MiniLM-L6-v2 checkpoint gives transformers' hidden states."""

import numpy as np
import torch
import transformers

import jaxkernel

SENTENCES = [
    "The cat sat on the mat.",
    "JAX compiles numerical programs with XLA.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "I loved this movie!",
    "This was, without a doubt, the worst meal I have ever eaten.",
    "Quantum entanglement puzzles physicists.",
    "Hello",
    "A very long sentence " + "that keeps going " * 12 + "until it finally stops.",
    "Numbers like 3.14159 and 2,718 appear here.",
    "Émile Zola wrote Germinal in 1885.",
    "Tokyo's subway moves millions every day.",
    "def main(): return 0",
    "Can you recommend a good book about history?",
    "The stock market fell sharply on Monday.",
    "She sells sea shells by the sea shore.",
    "Photosynthesis converts light into chemical energy.",
    "Why?",
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning models need data.",
    "Rain is expected tomorrow in Seattle.",
    "user@example.com sent an e-mail at 9:30am.",
    "New York Yankees beat the Boston Red Sox 5-3.",
]


def test_minilm_hidden_states_match_transformers(minilm_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    hf = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state.numpy()

    model = jaxkernel.from_pretrained(minilm_dir)
    assert type(model).__name__ == "BertModel"
    out = np.asarray(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).last_hidden_state)
    assert len(SENTENCES) >= 20
    assert out.shape == ref.shape
    real = batch["attention_mask"].astype(bool)  # states at [PAD] positions feed nothing downstream
    np.testing.assert_allclose(out[real], ref[real], atol=1e-4)
    assert np.abs(out[real] - ref[real]).max() < 2e-5  # measured 3.7e-6 on this machine
