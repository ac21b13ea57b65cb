"""Hugging Face interchange: mapping tables, checkpoint I/O, from/save_pretrained."""
