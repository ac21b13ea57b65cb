"""int8 quantization: pure functions, int8 modules, model surgery, memory, persistence."""
